"""aistream.settings: one validated object, environment read in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from aistream.settings import Settings, SettingsError


def test_defaults_are_simulated() -> None:
    """With no upstream configured the simulated model serves."""
    assert Settings.from_env({}).upstream_kind == "simulated"


def test_openai_env_names_select_the_real_upstream() -> None:
    """OPENAI_BASE_URL / OPENAI_API_KEY configure the openai upstream."""
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "sk-secret-1"}
    s = Settings.from_env(env)
    assert (s.upstream_kind, s.base_url, s.api_key) == (
        "openai",
        env["OPENAI_BASE_URL"],
        "sk-secret-1",
    )
    assert "sk-secret-1" not in repr(s)  # the key is never printed


def test_prefixed_env_and_overrides() -> None:
    """AISTREAM_* fields are parsed by type; explicit overrides win; None overrides are ignored."""
    s = Settings.from_env(
        {
            "AISTREAM_BRIDGE_PORT": "9000",
            "AISTREAM_STALL_TIMEOUT": "2.5",
            "AISTREAM_WS_COMPRESSION": "yes",
            "AISTREAM_STATIC_DIR": "/tmp/x",
        },
        bridge_port=None,
        stall_timeout=1.0,
    )
    assert (s.bridge_port, s.stall_timeout, s.ws_compression, s.static_dir) == (
        9000,
        1.0,
        True,
        Path("/tmp/x"),
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AISTREAM_BRIDGE_PORT": "eighty"}, "AISTREAM_BRIDGE_PORT"),
        ({"AISTREAM_BRIDGE_PORT": "70000"}, "bridge_port"),
        ({"AISTREAM_STALL_TIMEOUT": "0"}, "stall_timeout"),
        ({"AISTREAM_DEADLINE": "1000"}, "deadline"),
        ({"AISTREAM_GENERATOR_TARGET": "nowhere"}, "generator_target"),
        ({"AISTREAM_GENERATOR_TARGET": "ipv4:10.0.0.1:1,10.0.0.2"}, "generator_target"),
        ({"AISTREAM_GENERATOR_TARGET": "dns:///generators"}, "generator_target"),
        ({"AISTREAM_REDIS_URL": "localhost:6379"}, "redis_url"),
        ({"OPENAI_BASE_URL": "ftp://x"}, "base_url"),
        ({"AISTREAM_WS_COMPRESSION": "maybe"}, "AISTREAM_WS_COMPRESSION"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], message: str) -> None:
    """A bad value raises SettingsError naming the setting."""
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:50051",
        "generators.internal:50051",
        "ipv4:10.0.0.1:50051,10.0.0.2:50052",
        "ipv6:[::1]:50051,[::1]:50052",
        "dns:///generators.internal:50051",
        "dns://10.0.0.53/generators.internal:50051",
    ],
)
def test_several_generators_are_one_target(target: str) -> None:
    """A host and port, or a gRPC target naming several generators (round robin)."""
    assert Settings(generator_target=target).generator_target == target


def test_configuration_doc_is_current() -> None:
    """docs/configuration.md is what tools/configuration_doc.py makes from Settings."""
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "configuration_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
