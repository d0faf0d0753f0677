"""A harness whose sms channel sends through Aliyun, Tencent and Twilio fakes, in a chosen order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from tests.fakes.aliyun import FakeAliyun
from tests.fakes.tencent import FakeTencent
from tests.fakes.twilio import FakeTwilio
from tests.support.harness import Harness
from tests.support.twilio_harness import FROM, hook_url

TOWNSHIP = {"codes": ["330502101"]}
SIGN = "塘甸镇应急办"
TOKEN = "push-token-7f3a9c"
# The approved templates, as filed: no link in a variable, no two variables side by side.
ISSUE = "${org}发布${event}预警（${level}）：${headline}。影响范围：${area}，请做好防范。"
ISSUE_ACK = ISSUE + "收到请回复1。"
TEMPLATES = {
    "issue": {
        "code": "SMS_100001",
        "text": ISSUE,
        "ack_code": "SMS_100002",
        "ack_text": ISSUE_ACK,
        "variables": {
            "org": {"field": "org", "max_chars": 12},
            "level": {"field": "level"},
            "event": {"field": "event"},
            "headline": {"field": "headline"},
            "area": {"field": "area"},
        },
    }
}


def aliyun_settings(fake: FakeAliyun, *, push: bool) -> dict[str, Any]:
    """[aliyun] for the fake: the SDK's endpoint at the fake, plain HTTP."""
    return {
        "access_key_id": fake.access_key_id,
        "access_key_secret": "aliyun-secret-never-logged",
        "sms_endpoint": fake.base,
        "protocol": "http",
        "sign_name": SIGN,
        "callback_token": TOKEN if push else None,
        "rate_per_s": 500,
        "timeout_s": 2.0,
        "sms_templates": TEMPLATES,
    }


# Tencent's templates as filed: {1} … {5}, each variable at most 12 characters.
TENCENT_ISSUE = "{1}发布{2}预警（{3}）：{4}。影响范围：{5}，请做好防范。"
TENCENT_ISSUE_ACK = TENCENT_ISSUE + "收到请回复1。"
TENCENT_TEMPLATES = {
    "issue": {
        "code": "100001",
        "text": TENCENT_ISSUE,
        "ack_code": "100002",
        "ack_text": TENCENT_ISSUE_ACK,
        "variables": {
            "1": {"field": "org"},
            "2": {"field": "event"},
            "3": {"field": "level"},
            "4": {"field": "headline"},
            "5": {"field": "area"},
        },
    }
}


# Aliyun voice: TTS templates as filed (文本转语音模板), the IVR start ending with the key prompt.
CALL = "这里是${org}。${event}预警（${level}）：${headline}。"
CALL_ACK = CALL + "收到请按1。"
VOICE_FILED = {"TTS_200001": CALL, "TTS_200002": CALL_ACK, "TTS_200009": "已确认，谢谢。"}
ALIYUN_VOICE = {
    "called_show_number": "057100000000",
    "ivr_confirm_code": "TTS_200009",
    "voice_templates": {
        "issue": {
            "code": "TTS_200001",
            "text": CALL,
            "ack_code": "TTS_200002",
            "ack_text": CALL_ACK,
            "variables": {
                "org": {"field": "org"},
                "event": {"field": "event"},
                "level": {"field": "level"},
                "headline": {"field": "headline"},
            },
        }
    },
}


# Tencent voice messages: the ack template ends with the key prompt.
TENCENT_VOICE_FILED = {
    "300001": "这里是{1}。{2}预警（{3}）。",
    "300002": "这里是{1}。{2}预警（{3}），收到请按1。",
}
TENCENT_VOICE = {
    "issue": {
        "code": "300001",
        "text": TENCENT_VOICE_FILED["300001"],
        "ack_code": "300002",
        "ack_text": TENCENT_VOICE_FILED["300002"],
        "variables": {"1": {"field": "org"}, "2": {"field": "event"}, "3": {"field": "level"}},
    }
}


def tencent_settings(fake: FakeTencent, *, push: bool) -> dict[str, Any]:
    """[tencent] for the fake: the SDK's endpoint at the fake, plain HTTP."""
    return {
        "secret_id": fake.secret_id,
        "secret_key": "tencent-secret-never-logged",
        "sms_endpoint": fake.base,
        "protocol": "http",
        "sms_sdk_app_id": fake.app_id,
        "sign_name": SIGN,
        "callback_token": TOKEN if push else None,
        "rate_per_s": 500,
        "timeout_s": 2.0,
        "sms_templates": TENCENT_TEMPLATES,
    }


@asynccontextmanager
async def china_harness(
    tmp_path: Path,
    *,
    push: bool = True,
    villages: int = 3,
    officials: int = 1,
    providers: tuple[str, ...] = ("aliyun",),
    voice: tuple[str, ...] = (),
    dispatch: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Harness, FakeAliyun, FakeTencent, FakeTwilio]]:
    """A started harness whose sms channel sends through `providers`, in that order, each at its fake."""
    fake = FakeAliyun(templates={"SMS_100001": ISSUE, "SMS_100002": ISSUE_ACK, **VOICE_FILED}, sign_name=SIGN)
    await fake.start()
    filed = {"100001": TENCENT_ISSUE, "100002": TENCENT_ISSUE_ACK, **TENCENT_VOICE_FILED}
    tencent = FakeTencent(templates=filed, sign_name=SIGN)
    await tencent.start()
    async with FakeTwilio() as twilio:
        settings: dict[str, Any] = {
            "sms": {"providers": list(providers), "signature": SIGN},
            "aliyun": {**aliyun_settings(fake, push=push), **ALIYUN_VOICE, "voice_endpoint": fake.base},
            "tencent": {
                **tencent_settings(tencent, push=push),
                "vms_endpoint": tencent.base,
                "voice_sdk_app_id": tencent.voice_app_id,
                "voice_templates": TENCENT_VOICE,
            },
            "dispatch": {"batch_size": 2000, **(dispatch or {})},
        }
        if "twilio" in providers:
            settings["twilio"] = {
                "account_sid": twilio.account_sid, "auth_token": twilio.auth_token, "from_number": FROM,
                "api_base": twilio.base_url, "rate_per_s": 500,
            }  # fmt: skip
        directory = {"villages": villages, "officials": officials, "test_village": False}
        if voice:
            settings["voice"] = {"providers": list(voice)}
        adapters = [SmsAdapter, VoiceAdapter] if voice else [SmsAdapter]
        h = Harness(tmp_path, channels=(), directory=directory, settings=settings, adapters=adapters)
        fake.now = tencent.now = h.clock.now
        await h.start()
        try:
            if "twilio" in providers:
                h.settings.twilio.public_base_url = hook_url(h, "")
            yield h, fake, tencent, twilio
        finally:
            await h.close()
            await fake.close()
            await tencent.close()
