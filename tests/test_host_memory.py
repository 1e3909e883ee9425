"""The CPU-backend malloc setting: applied on CPU, skipped when asked, honest about what it did."""

import pytest

from ssl_jax import host_memory


def test_keep_freed_memory_is_accepted_by_glibc():
    # CI and the dev machine run glibc: mallopt must accept all three settings.
    assert host_memory.keep_freed_memory() is True


def test_tune_for_backend_applies_on_cpu(monkeypatch):
    calls = []
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert "keeps freed memory" in host_memory.tune_for_backend()
    assert calls == [1]


@pytest.mark.parametrize(
    "env, works, expected",
    [("default", True, "SSL_JAX_MALLOC=default"), ("", False, "no glibc mallopt")],
)
def test_tune_for_backend_says_when_it_left_malloc_alone(monkeypatch, env, works, expected):
    calls = []
    monkeypatch.setenv(host_memory.ENV, env)
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or works)
    message = host_memory.tune_for_backend()
    assert message.startswith("malloc: default") and expected in message
    assert calls == ([] if env == "default" else [1])
