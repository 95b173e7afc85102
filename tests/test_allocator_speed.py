"""The allocator benchmark finds the preloadable mallocs and reports each against glibc."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import allocator_speed  # noqa: E402


def test_installed_allocators_are_preloaded_and_missing_ones_skipped(tmp_path, monkeypatch):
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    monkeypatch.setattr(allocator_speed, "LIB_DIRS", (str(tmp_path),))
    monkeypatch.setattr(allocator_speed.sys, "prefix", str(tmp_path / "no-such-venv"))
    envs = allocator_speed.allocator_envs()
    assert list(envs) == ["glibc", "jemalloc"]
    assert envs["glibc"] == {}
    assert envs["jemalloc"]["LD_PRELOAD"] == str(tmp_path / "libjemalloc.so.2")
    assert "dirty_decay_ms:-1" in envs["jemalloc"]["MALLOC_CONF"]


def test_the_table_gives_each_allocator_its_median_and_its_ratio_to_glibc():
    def runs(rates):
        return {"images_per_s": rates, "minor_faults": [1000] * 3, "sys_s": [1.0] * 3}

    result = {
        "machine": "Xeon (2 threads)",
        "precision": "bf16",
        "epochs": 1,
        "rounds": 3,
        "envs": {
            "glibc": {},
            "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": "dirty_decay_ms:-1"},
        },
        "runs": {"glibc": runs([400, 500, 450]), "jemalloc": runs([495, 520, 900])},
    }
    text = allocator_speed.render(result)
    assert "| glibc | 450 | 400, 500, 450 | 1.00x |" in text
    assert "| jemalloc (dirty_decay_ms:-1) | 520 | 495, 520, 900 | 1.16x |" in text
    assert "Xeon (2 threads); bf16" in text
