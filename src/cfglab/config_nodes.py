"""What a config may hold: the keys its yaml files declare, and for every `_target_` node the arguments, of the
types, that its target's signature accepts (checked by pydantic). Used by the configuration check
(cfglab.config_checks) and, before Hydra composes anything, by the entry scripts."""

from __future__ import annotations

import difflib
import inspect
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union

import yaml
from hydra.utils import get_method
from lightning.pytorch import Trainer
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import ConfigDict, TypeAdapter, ValidationError

HYDRA_ARGS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def config_dir() -> Path:
    """The folder of the job's yaml files: Hydra's primary config source when a Hydra job is composed, else the
    repository's conf/."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    return Path(__file__).resolve().parents[2] / "conf"


# ---------------------------------------------------------------- the keys the yaml files declare

def _load(path: Path) -> tuple[dict, Optional[str]]:
    """A yaml file's content and its `# @package` directive (None: the file's group)."""
    text = path.read_text()
    package = next((line.split("@package", 1)[1].strip() for line in text.splitlines()[:3]
                    if line.startswith("# @package")), None)
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}, package


def _paths(node: Any, prefix: str) -> Iterator[str]:
    """Dotted paths of every key in a yaml mapping; an interpolated value (${...}) ends in `prefix.*`, for the
    keys of the node it stands for are not known here."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "defaults":
                path = f"{prefix}.{k}" if prefix else str(k)
                yield path
                yield from _paths(v, path)
    elif isinstance(node, str) and node.startswith("${"):
        yield f"{prefix}.*"


@lru_cache(maxsize=None)
def _primary(conf: Path, config_name: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """The key paths of a primary config and of the primary configs its defaults list extends (distill ->
    config), and the config groups their defaults lists name."""
    paths, groups, todo, seen = set(), [], [config_name], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        content, _ = _load(conf / f"{name}.yaml")
        paths |= set(_paths(content, ""))
        for entry in content.get("defaults", []):
            if isinstance(entry, str) and entry != "_self_":
                todo.append(entry)
            elif isinstance(entry, dict):
                groups += [str(g).split("@")[0].removeprefix("override ").strip("/ ") for g in entry]
    return frozenset(paths), tuple(dict.fromkeys(g for g in groups if not g.startswith("hydra")))


@lru_cache(maxsize=None)
def _group_paths(conf: Path, group: str) -> frozenset[str]:
    """The key paths every option of a config group can set, under the group's package (`@package _global_`
    options at the top)."""
    paths = set()
    for path in (conf / group).rglob("*.yaml"):
        content, package = _load(path)
        prefix = "" if package == "_global_" else (package or group.replace("/", "."))
        paths |= set(_paths(content, prefix)) | ({prefix} if prefix else set())
    return frozenset(paths)


def declared_paths(conf: Path, config_name: str) -> frozenset[str]:
    """Every key path a job's composed config can hold, as its yaml files declare them: the primary config's and
    those of every option of the groups its defaults list names. Hydra's own node is left out."""
    own, groups = _primary(conf, config_name)
    paths = own.union(*(_group_paths(conf, g) for g in groups))
    return frozenset(p for p in paths if p != "hydra" and not p.startswith("hydra."))


def job_keys(config_name: str) -> set[str]:
    """The top-level keys of a job's config, from its yaml files: the primary config's, its groups' names, and
    the top-level keys of the groups whose options are `@package _global_` (experiment presets)."""
    conf = config_dir()
    own, groups = _primary(conf, config_name)
    keys = {p.split(".")[0] for p in own} | {g.split("/")[0] for g in groups}
    for group in groups:
        if all(_load(path)[1] == "_global_" for path in (conf / group).rglob("*.yaml")):
            keys = (keys - {group}) | {p.split(".")[0] for p in _group_paths(conf, group)}
    return keys - {"hydra"}


def similar_keys(key: str, paths) -> list[str]:
    """The paths of the config whose last part is the closest to the last part of `key` (guidance.w -> grids.ws,
    sweep.ws), at most three."""
    name = key.rsplit(".", 1)[-1]
    leaves = {p for p in paths if not p.endswith("*") and p != key}
    ratio = {leaf: difflib.SequenceMatcher(None, name, leaf.rsplit(".", 1)[-1]).ratio() for leaf in leaves}
    best = max((r for r in ratio.values()), default=0.0)
    return sorted(leaf for leaf, r in ratio.items() if r == best and r >= 0.6)[:3]


def unknown_key_message(key: str, value: str, paths, accepted: Optional[list] = None, target: str = "") -> str:
    """"unknown key (value 3) for <target>; accepted: [...]; did you mean grids.ws or sweep.ws?"; `value` as
    written."""
    parts = [f"unknown key (value {value})" + (f" for {target}" if target else "")]
    if accepted is not None:
        parts.append(f"accepted: {accepted}")
    similar = similar_keys(key, paths)
    if similar:
        parts.append(f"did you mean {' or '.join(similar)}?")
    return "; ".join(parts)


def _declared(key: str, paths) -> bool:
    parts = key.split(".")
    return key in paths or any(".".join(parts[:i]) + ".*" in paths for i in range(1, len(parts)))


def unknown_overrides(args: list[str], conf: Path, config_name: str) -> list[tuple[str, str]]:
    """(key, message) for each command-line override that changes a key no yaml file of the job declares (e.g.
    guidance.w=3). Hydra would refuse these while composing, without saying where such a value belongs; adding a
    key (+key=value) composes, and the configuration check names it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, found = OverridesParser.create(), []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:
            continue  # malformed: Hydra reports it
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete() or "/" in key or \
                key.startswith("hydra") or override.package is not None or (conf / key).is_dir():
            continue  # additions and deletions compose; a group choice (data=mnist) is Hydra's to check
        paths = declared_paths(conf, config_name)
        if not _declared(key, paths):
            found.append((key, unknown_key_message(key, arg.split("=", 1)[1], paths)))
    return found


# ---------------------------------------------------------------- `_target_` nodes and their arguments

@lru_cache(maxsize=None)
def accepted_arguments(target) -> Optional[frozenset[str]]:
    """Named parameters of a function or class; None when **kwargs may take anything. cfglab's own classes
    pass **kwargs on to their parent's __init__, so the parents' parameters count too."""
    inits = [k.__dict__["__init__"] for k in target.__mro__ if "__init__" in k.__dict__] if isinstance(target, type) \
        else [target]
    names: set[str] = set()
    for fn in inits:
        if fn is object.__init__:
            return None
        params = inspect.signature(fn).parameters.values()
        names |= {q.name for q in params if q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)} - {"self"}
        if not any(q.kind is q.VAR_KEYWORD for q in params):
            return frozenset(names)
        if not fn.__module__.startswith("cfglab."):
            return None
    return None


@lru_cache(maxsize=None)
def _annotations(target) -> dict[str, Any]:
    """The parameter annotations of a function or class (with the cfglab parents' it forwards **kwargs to)."""
    inits = [k.__dict__["__init__"] for k in reversed(target.__mro__) if "__init__" in k.__dict__] \
        if isinstance(target, type) else [target]
    hints: dict[str, Any] = {}
    for fn in inits:
        if fn is object.__init__:
            continue
        try:
            hints |= typing.get_type_hints(fn)
        except Exception:  # an annotation that cannot be evaluated here (a name imported for type checkers only)
            continue
    hints.pop("return", None)
    if target is Trainer and "precision" in hints:  # cfglab resolves 'auto' before it builds the Trainer
        hints["precision"] = Union[Literal["auto"], hints["precision"]]  # (cfglab.lightning.trainer.build_trainer)
    return hints


@lru_cache(maxsize=None)
def _adapter(annotation) -> TypeAdapter:
    """pydantic's validator of one annotation, built once per annotation (most repeat across constructors)."""
    return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))


def _location(loc: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def type_problems(target, values: dict, path: str) -> list[tuple[str, str]]:
    """(key, message) for each value of `values` (argument name -> plain value) that does not fit the type its
    parameter of `target` is annotated with, as pydantic's validation (lax mode: what the constructor accepts)
    finds them, each at its location (module.betas[1]) with its value."""
    hints, problems = _annotations(target), []
    for key in sorted(k for k in values if k in hints):
        try:
            _adapter(hints[key]).validate_python(values[key])
        except ValidationError as e:
            found: dict[str, tuple[Any, list[str]]] = {}
            for err in e.errors():
                # A union's members add their names to the location (precision.literal[...]): one line per value.
                where = _location((key, *_leading_indices(err["loc"])))
                message = f"missing from {err['input']!r}" if err["type"] == "missing" else err["msg"]
                found.setdefault(where, (err["input"], []))[1].append(message.removeprefix("Input should be "))
            problems += [(f"{path}{where}", (f"{value!r}: should be " if not msgs[0].startswith("missing") else "")
                          + " or ".join(dict.fromkeys(msgs))) for where, (value, msgs) in found.items()]
        except Exception:  # an annotation pydantic cannot build a validator for: the constructor's own check decides
            continue
    return problems


def _leading_indices(loc: tuple) -> Iterator:
    """The item indices that follow a field in a pydantic error location, up to a union member's name."""
    for part in loc:
        if not isinstance(part, int):
            return
        yield part


def _is_node(value: Any) -> bool:
    """A value built by its own `_target_` node, or standing for one (an interpolation: ${sampler})."""
    return isinstance(value, dict) and "_target_" in value or isinstance(value, str) and value.startswith("${")


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(path, node) of every `_target_` node in a config, depth first."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from target_nodes(item, f"{path}[{i}]")
    if not isinstance(node, DictConfig):
        return
    for key, value in node.items_ex(resolve=False):  # an interpolation (${sampler}) is checked where it points
        if key != "hydra" and not str(key).startswith("_"):
            yield from target_nodes(value, f"{path}.{key}" if path else str(key))
    if "_target_" in node:
        yield path, node


def node_problems(path: str, node: DictConfig, paths: Callable[[], frozenset], add: Callable[[str, str], None]) -> None:
    """Report through add(key, message) every argument of a `_target_` node its target does not accept (with the
    similar keys among paths(), the config's key paths), and every value whose type does not fit (unresolvable
    or ??? values are left to building the node)."""
    try:
        target = get_method(node._target_)
    except Exception:
        add(f"{path}._target_", f"{node._target_!r} cannot be imported")
        return
    raw = OmegaConf.to_container(node, resolve=False)
    accepted = accepted_arguments(target)
    if accepted is not None:  # None: forwards keywords to something unknown, whose constructor rejects unknown ones
        for key in sorted(set(raw) - accepted - HYDRA_ARGS):
            add(f"{path}.{key}", unknown_key_message(f"{path}.{key}", repr(raw[key]), paths(), sorted(accepted),
                                                     node._target_))
    values = {}
    for key in set(raw) & (accepted or set(raw)) - HYDRA_ARGS:
        if _is_node(raw[key]) or OmegaConf.is_missing(node, key):
            continue
        try:
            value = node[key]
        except Exception:  # a broken interpolation: building the node reports it
            continue
        values[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) \
            else value
    for key, message in type_problems(target, values, path):
        add(key, message)

