"""YAML → `Config`: plain values with `${VAR}` substituted and the line of each path, then
every check (`validation`), each problem reported with its path (`routes[2].auth.scopes`)
and line, all at once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from .config import Config
from .errors import ConfigError
from .validation import Validator

MAX_NODES: Final = 100_000
MAX_DEPTH: Final = 32  # the schema nests 5 deep; more is a mistake or an attack
ENV_PATTERN: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_file(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise `ConfigError` listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{path}: cannot read: {err}"]) from None
    return load_text(text, environ, base_dir=Path(path).resolve().parent)


def load_text(
    text: str, environ: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    environ = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError([f"<config>: not valid YAML: {err}"]) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError(["<config>: not valid YAML: nested too deeply"]) from None
    reader = _Reader(environ)
    data = reader.value(root, "") if root is not None else {}
    if reader.problems:
        raise ConfigError(reader.problems)
    validator = Validator(reader.lines, base_dir or Path.cwd())
    config = validator.config(data)
    if validator.problems or config is None:
        raise ConfigError(validator.problems)
    return config


class _Reader:
    """Turns YAML nodes into plain values, remembering each path's line."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []
        self.nodes = 0
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()

    def value(self, node: yaml.Node, path: str, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConfigError([f"{path or '<config>'}: too many YAML nodes (aliases?)"])
        if depth > MAX_DEPTH:  # also ends a self-referencing alias (`a: &x {b: *x}`)
            raise ConfigError([f"{path or '<config>'}: nested too deeply (aliases?)"])
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, f"{path}[{i}]", depth + 1)
                    for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: str, depth: int) -> dict[str, Any]:
        try:
            self.constructor.flatten_mapping(node)  # `<<:` merge keys
        except yaml.YAMLError as err:
            self.problem(path, node, f"bad merge key: {getattr(err, 'problem', err)}")
            return {}
        except RecursionError:
            raise ConfigError([f"{path or '<config>'}: merge key refers to itself"]) from None
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(path, key_node, "keys must be strings")
                continue
            key = self.scalar(key_node, path)
            child = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.problem(child, key_node, "keys must be strings")
                continue
            if key in result:
                self.problem(child, key_node, "duplicate key")
                continue
            result[key] = self.value(value_node, child, depth + 1)
        return result

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(path, node, "expected a plain value")
            return None
        text = node.value
        if "${" in text:
            text = self.substitute(text, path, node)
            if node.style is None:  # plain scalar: give it the type its new text has
                tag = self.resolver.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark)
            else:
                return text
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            self.problem(path, node, f"bad value: {err}")
            return None

    def substitute(self, text: str, path: str, node: yaml.Node) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if default is not None and not value:  # `:-` as in sh: unset or empty
                return default
            if value is not None:
                return value
            self.problem(path, node, f"environment variable {name} is not set")
            return ""

        return ENV_PATTERN.sub(replace, text)

    def problem(self, path: str, node: yaml.Node, message: str) -> None:
        self.problems.append(f"{path or '<config>'}: {message} (line {node.start_mark.line + 1})")
