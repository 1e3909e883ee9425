"""The CPU malloc setting: applied when JAX will run on the CPU, skipped when asked, honest."""

import pytest

from ssl_jax import host_memory


def test_keep_freed_memory_is_accepted_by_glibc():
    # CI and the dev machine run glibc: mallopt must accept all three settings.
    assert host_memory.keep_freed_memory() is True


@pytest.mark.parametrize(
    "env, platforms, works, applied, says",
    [
        ("", "cpu", True, True, "keeps freed memory"),
        ("auto", "cuda", True, False, "accelerator backend is expected"),
        ("keep", "cuda", True, True, "keeps freed memory"),
        ("default", "cpu", True, False, "SSL_JAX_MALLOC=default"),
        ("", "cpu", False, False, "no glibc mallopt"),
    ],
)
def test_configure_decides_before_jax_starts(monkeypatch, env, platforms, works, applied, says):
    calls = []
    monkeypatch.setenv(host_memory.ENV, env) if env else monkeypatch.delenv(
        host_memory.ENV, raising=False
    )
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or works)
    assert host_memory.configure() is applied
    assert says in host_memory.status()
    assert host_memory.status().startswith("malloc: keeps" if applied else "malloc: default")
    assert len(calls) == (env != "default" and (platforms == "cpu" or env == "keep"))


def test_configure_rejects_an_unknown_setting(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "kep")
    with pytest.raises(ValueError, match="SSL_JAX_MALLOC='kep'"):
        host_memory.configure()


def test_without_jax_platforms_an_installed_plugin_means_an_accelerator(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host_memory.importlib.metadata, "entry_points", lambda group: ["cuda"])
    assert host_memory._accelerator_expected()
    monkeypatch.setattr(host_memory.importlib.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(host_memory.importlib.util, "find_spec", lambda name: None)
    assert not host_memory._accelerator_expected()


def test_an_empty_setting_is_auto_and_a_cpu_fallback_gets_a_hint(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # an accelerator expected ...
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: True)
    assert host_memory.configure() is False
    # ... but these tests run JAX on the CPU: the status says what would help.
    assert host_memory.status().endswith("SSL_JAX_MALLOC=keep would speed it up")
