"""A small reader for the parts of a Dockerfile and a .dockerignore the tests check:
stages, COPY sources, ENV, CMD and HEALTHCHECK, and whether a path is ignored."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, COPY, ENV, ...
    arguments: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def copy_sources(self) -> list[str]:
        """Sources of COPY/ADD from the build context (not `--from` another stage)."""
        sources: list[str] = []
        for instruction in self.all("COPY") + self.all("ADD"):
            words = _words(instruction.arguments)
            if any(w.startswith("--from=") for w in words):
                continue
            paths = [w for w in words if not w.startswith("--")]
            sources.extend(paths[:-1])
        return sources

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.arguments):
                key, _, value = word.partition("=")
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON (exec) form of the last CMD, ENTRYPOINT or HEALTHCHECK ... CMD."""
        arguments = self.all(keyword)[-1].arguments
        if keyword == "HEALTHCHECK":
            arguments = arguments[arguments.index("CMD") + len("CMD") :]
        command: list[str] = json.loads(arguments)
        return command


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, in order, with their instructions."""
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, arguments = logical.partition(" ")
        logical = ""
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name))
        if stages:
            stages[-1].instructions.append(instruction)
    return stages


def _words(arguments: str) -> list[str]:
    if arguments.startswith("["):
        words: list[str] = json.loads(arguments)
        return words
    return shlex.split(arguments)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(dockerignore: Path, path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context.

    Docker's rules: a path is out when the last pattern matching it, or one of its
    parent directories, is not a `!` exception. Enough of them for these checks.
    """
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern_regex(line.lstrip("!").strip("/").removeprefix("./"))))
    parts = path.strip("/").removeprefix("./").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded
