"""`precision: auto` and the line a run prints about its precision: bf16 where the device computes it natively,
float32 elsewhere (emulated bf16 autocast is several times slower than float32 on an AVX2-only CPU)."""

import logging

import pytest
from omegaconf import OmegaConf

import cfglab.devices as devices
from cfglab.devices import native_bf16, resolve_precision
from cfglab.lightning.trainer import build_trainer
from helpers import composed
from cfglab.config_checks import ConfigError, check_train_config

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize("flags, native", [(AVX2_ONLY, False), (SAPPHIRE_RAPIDS, True), ({"asimd", "bf16"}, True),
                                           (None, False)])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    assert native_bf16("cpu")[0] is native


def test_a_onednn_isa_cap_below_bf16_counts_as_no_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: SAPPHIRE_RAPIDS)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert native_bf16("cpu") == (False, "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off this CPU's bf16 instructions")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert native_bf16("cpu")[0]


def test_auto_picks_float32_on_a_cpu_without_native_bf16_and_says_why(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: AVX2_ONLY)
    chosen, line = resolve_precision("trainer.precision", "auto", "cpu")
    assert chosen == "32-true" and line.startswith("trainer.precision=auto: 32-true, since this CPU has no native bf16")
    monkeypatch.setattr(devices, "_cpu_flags", lambda: SAPPHIRE_RAPIDS)
    chosen, line = resolve_precision("trainer.precision", "auto", "cpu")
    assert chosen == "bf16-mixed" and "amx_bf16, avx512_bf16" in line


def test_an_explicit_precision_is_kept_and_bf16_without_native_support_is_named(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: AVX2_ONLY)
    chosen, line = resolve_precision("trainer.precision", "bf16-mixed", "cpu")
    assert chosen == "bf16-mixed" and "trainer.precision=bf16-mixed, but this CPU has no native bf16" in line
    assert "trainer.precision=auto picks the fast one" in line
    assert resolve_precision("trainer.precision", "32-true", "cpu") == ("32-true", None)
    monkeypatch.setattr(devices, "_cpu_flags", lambda: SAPPHIRE_RAPIDS)
    assert resolve_precision("trainer.precision", "bf16-mixed", "cpu") == ("bf16-mixed", None)


def test_the_trainer_is_built_with_the_resolved_precision_and_one_line(monkeypatch, caplog):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: AVX2_ONLY)
    args = OmegaConf.create({"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1,
                             "precision": "auto", "max_steps": 1, "logger": False})
    with caplog.at_level(logging.INFO):
        trainer = build_trainer(args)
    assert trainer.precision == "32-true"
    assert [r.getMessage() for r in caplog.records if "precision" in r.getMessage()] == [
        "trainer.precision=auto: 32-true, since this CPU has no native bf16 "
        "(no avx512_bf16, amx_bf16 or Arm bf16 flag)"]


def test_the_configuration_check_takes_auto_and_still_refuses_other_values(tmp_path):
    check_train_config(composed("config", ["trainer.precision=auto"], tmp_path))
    with pytest.raises(ConfigError, match="trainer.precision: 'fast'"):
        check_train_config(composed("config", ["trainer.precision=fast"], tmp_path))
