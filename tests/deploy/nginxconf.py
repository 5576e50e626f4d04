"""A minimal nginx configuration parser for the tests: directives and blocks,
quotes and comments, and the syntax errors nginx itself would refuse."""

from __future__ import annotations

from dataclasses import dataclass


class NginxSyntaxError(ValueError):
    pass


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None  # None for a simple `name args;`

    def find(self, name: str) -> list[Directive]:
        """Every directive called `name` at any depth below this one."""
        return find(self.block or [], name)


def find(directives: list[Directive], name: str) -> list[Directive]:
    found: list[Directive] = []
    for directive in directives:
        if directive.name == name:
            found.append(directive)
        found.extend(directive.find(name))
    return found


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char in "{};":
            tokens.append(char)
            i += 1
        elif char in "'\"":
            end = text.find(char, i + 1)
            if end < 0:
                raise NginxSyntaxError(f"unterminated quote at offset {i}")
            tokens.append(text[i + 1 : end])
            i = end + 1
        else:
            start = i
            while i < len(text) and not text[i].isspace() and text[i] not in "{};'\"#":
                i += 1
            tokens.append(text[start:i])
    return tokens


def parse(text: str) -> list[Directive]:
    """The directives of a configuration, blocks nested; raises NginxSyntaxError."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in _tokens(text):
        if token == ";":
            if not words:
                raise NginxSyntaxError("empty directive")
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            if not words:
                raise NginxSyntaxError("block without a name")
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], block))
            stack.append(block)
            words = []
        elif token == "}":
            if words:
                raise NginxSyntaxError(f"directive without ';' before '}}': {' '.join(words)}")
            if len(stack) == 1:
                raise NginxSyntaxError("unexpected '}'")
            stack.pop()
        else:
            words.append(token)
    if words:
        raise NginxSyntaxError(f"directive without ';' at the end: {' '.join(words)}")
    if len(stack) != 1:
        raise NginxSyntaxError("unclosed block")
    return stack[0]
