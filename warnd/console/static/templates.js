// Ready texts for the common events, filled in and editable: what a duty officer would write at
// 3 a.m. The texts go out in Chinese whatever the console's language.
const COLOUR = { red: "红色", orange: "橙色", yellow: "黄色", blue: "蓝色" };

export const TEMPLATES = {
  "暴雨": {
    level: "orange",
    description: "预计未来6小时内本镇将出现暴雨，累计降雨量可达100毫米以上，山区可能引发山洪、滑坡。",
    instruction: "请立即转移低洼地带、山洪危险区和地质灾害隐患点人员；停止户外作业，远离河道、沟渠。",
  },
  "台风": {
    level: "orange",
    description: "今年第X号台风预计将于48小时内影响本镇，阵风可达10级以上，并伴有强降雨。",
    instruction: "请加固门窗、围板、棚架，船只回港避风，危房和低洼地带人员提前转移到安置点，非必要不外出。",
  },
  "山洪": {
    level: "red",
    description: "受持续强降雨影响，本镇山区溪沟水位快速上涨，可能发生山洪。",
    instruction: "请沿溪沟、山脚居住的群众立即向高处转移，不要涉水过河，听从网格员和村干部指挥。",
  },
  "地质灾害": {
    level: "orange",
    description: "受降雨影响，本镇地质灾害隐患点发生滑坡、崩塌、泥石流的风险很高。",
    instruction: "请隐患点周边群众立即撤离到安全地带，发现裂缝、异响、渗水立即报告，雨停后不要急于返回。",
  },
  "高温": {
    level: "yellow",
    description: "预计未来3天本镇最高气温将达37℃以上。",
    instruction: "请避免在高温时段户外作业，老人、儿童和慢性病患者注意防暑，多饮水，注意用电和防火安全。",
  },
  "寒潮": {
    level: "blue",
    description: "受强冷空气影响，预计48小时内本镇气温下降8℃以上，最低气温0℃以下，伴有大风。",
    instruction: "请注意添衣保暖，做好农作物、畜禽和水管防冻，老人和体弱者减少外出，用火取暖注意防一氧化碳中毒。",
  },
  "大风": {
    level: "yellow",
    description: "预计未来12小时本镇将出现8级以上大风。",
    instruction: "请加固棚架、广告牌等易被风吹动的搭建物，停止高空和水上作业，行人远离临时建筑和大树。",
  },
};

/** The headline a template gives at a level: 本镇发布暴雨橙色预警. */
export function headlineFor(event, level) {
  return `本镇发布${event}${COLOUR[level] || ""}预警`;
}
