"""Every `python <entry>.py ...` command shown in README.md and docs/*.md passes its job's configuration check.

Paths in the commands are placeholders (`/data/mnist`, `<run>/...`, `outputs/.../last.ckpt`): each is replaced by a
path that does not exist, and only the problems that name such a path, or the key it was given to, are excused.
Everything else (group choices, keys, value types, ranges, guidance grids, preset rules) must pass, so a renamed
key or a changed preset that the docs still show fails here. A multirun's sweep values are checked one job per
value."""

import itertools
import re
import shlex

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from cfglab.config_checks import (ConfigError, check_distill_config, check_evaluate_config, check_generate_config,
                                  check_prepare_config, check_train_config)
from cfglab.config_nodes import unknown_overrides
from helpers import ROOT, composed

JOBS = {"train": ("config", check_train_config), "evaluate": ("evaluate", check_evaluate_config),
        "generate": ("generate", check_generate_config), "prepare": ("prepare", check_prepare_config),
        "distill": ("distill", check_distill_config)}
PLACEHOLDER = "/nonexistent/docs-placeholder"
NO_CUDA = not torch.cuda.is_available()


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, entry, arguments) of every Hydra entry point called in a bash block of the docs."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0]
                m = re.search(r"(?:^|\s)(train|evaluate|generate|prepare|distill)\.py(\s.*)?$", line)
                if m and not line.lstrip().startswith("#"):
                    found.append((f"{page.name}: {line.strip()}", m.group(1), shlex.split(m.group(2) or "")))
    return found


def is_path(value: str) -> bool:
    return any(s in value for s in ("/", "<", "...", "$")) or value.endswith((".ckpt", ".pt", ".pth", ".npz"))


def jobs_of(args: list[str]) -> list[list[str]]:
    """The override lists to check: placeholder paths replaced, and a multirun's sweeps one value per job (the
    other sweeps at their first value)."""
    args = [a for a in args if a not in ("-m", "--multirun", "...")]  # "...": the reader's further overrides
    fixed, sweeps = [], []
    parser = OverridesParser.create()
    for arg in args:
        key, _, value = arg.partition("=")
        if is_path(value):
            fixed.append(f"{key}={PLACEHOLDER}/{key}")
            continue
        override = parser.parse_override(arg)
        if override.is_sweep_override():
            sweeps.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            fixed.append(arg)
    if not sweeps:
        return [fixed]
    firsts = [values[0] for values in sweeps]
    jobs = [fixed + firsts]
    for i, values in enumerate(sweeps):
        jobs += [fixed + firsts[:i] + [v] + firsts[i + 1:] for v in values[1:]]
    return jobs


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_job():
    assert {entry for _, entry, _ in COMMANDS} == set(JOBS)
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("where, entry, args", COMMANDS, ids=[w[:90] for w, _, _ in COMMANDS])
def test_a_documented_command_passes_the_configuration_check(where, entry, args, tmp_path):
    config_name, check = JOBS[entry]
    for overrides in jobs_of(args):
        assert unknown_overrides(overrides, ROOT / "conf", config_name) == [], where
        cfg = composed(config_name, overrides, tmp_path / "run")
        try:
            check(cfg)
        except ConfigError as e:
            placeholder_keys = {o.partition("=")[0] for o in overrides if PLACEHOLDER in o}
            real = [(k, m) for k, m in e.lines if PLACEHOLDER not in m and k not in placeholder_keys
                    and not (NO_CUDA and "CUDA" in m)]  # a GPU command checked on a machine without one
            assert real == [], f"{where}\n{overrides}"


def test_a_wrong_key_in_a_command_would_fail_here(tmp_path):
    """The check above can fail: a misspelt key and a bad value are caught with placeholders around them."""
    assert unknown_overrides(["sweep.w=[0,1]"], ROOT / "conf", "config")
    cfg = composed("evaluate", [f"ckpt_path={PLACEHOLDER}/x.ckpt", "sweep.num_samples=0"], tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        check_evaluate_config(cfg)
    assert any(PLACEHOLDER not in m and k != "ckpt_path" for k, m in e.value.lines)


def test_multirun_sweeps_are_checked_value_by_value():
    jobs = jobs_of(["-m", "guidance=cfg,apg", "module.p_uncond=0.1,0.2", "data.data_dir=/data/mnist"])
    assert len(jobs) == 3 and all(f"data.data_dir={PLACEHOLDER}/data.data_dir" in j for j in jobs)
    assert {tuple(sorted(j)) for j in jobs} == {tuple(sorted(j)) for j in [
        [f"data.data_dir={PLACEHOLDER}/data.data_dir", "guidance=cfg", "module.p_uncond=0.1"],
        [f"data.data_dir={PLACEHOLDER}/data.data_dir", "guidance=apg", "module.p_uncond=0.1"],
        [f"data.data_dir={PLACEHOLDER}/data.data_dir", "guidance=cfg", "module.p_uncond=0.2"]]}
    assert list(itertools.chain(*jobs_of(["trainer.max_steps=5"]))) == ["trainer.max_steps=5"]
