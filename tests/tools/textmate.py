"""A small TextMate tokenizer (match, begin/end, captures, include) over Python regexes.

Enough of the TextMate rules to check editors/textmate/dslc.tmLanguage.json: at each position the
pattern whose match starts leftmost wins (the first listed on ties), `begin`/`end` rules open a
scope that can span lines, and text that no rule matches (other than whitespace) is reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Token:
    line: int
    col: int
    text: str
    scope: str  # "" for text no rule matched


class Grammar:
    def __init__(self, path: Path):
        data = json.loads(path.read_text(encoding="utf-8"))
        self.repository = data.get("repository", {})
        self.top = self._flatten(data["patterns"])

    def _flatten(self, patterns: list[dict]) -> list[dict]:
        out: list[dict] = []
        for rule in patterns:
            if "include" in rule:
                out += self._flatten([self.repository[rule["include"].lstrip("#")]])
            elif "patterns" in rule and "match" not in rule and "begin" not in rule:
                out += self._flatten(rule["patterns"])
            else:
                out.append(rule)
        return out

    def tokenize(self, text: str) -> list[Token]:
        tokens: list[Token] = []
        stack: list[tuple[dict, re.Pattern]] = []  # open begin/end rules with their end regex
        for n, line in enumerate(text.split("\n"), start=1):
            pos = 0
            while pos < len(line):
                if stack:
                    rule, end = stack[-1]
                    inner = self._flatten(rule.get("patterns", []))
                    best = self._earliest(inner, line, pos)
                    end_match = end.search(line, pos)
                    if end_match and (best is None or end_match.start() <= best[1].start()):
                        tokens.append(Token(n, pos + 1, line[pos : end_match.end()], rule["name"]))
                        pos = end_match.end()
                        stack.pop()
                        continue
                    if best is None:
                        tokens.append(Token(n, pos + 1, line[pos:], rule["name"]))
                        break
                    _, m = best
                    tokens.append(Token(n, pos + 1, line[pos : m.end()], rule["name"]))
                    pos = max(m.end(), pos + 1)
                    continue
                if line[pos].isspace():
                    pos += 1
                    continue
                best = self._earliest(self.top, line, pos)
                if best is None or best[1].start() > pos:
                    stop = best[1].start() if best else len(line)
                    tokens.append(Token(n, pos + 1, line[pos:stop], ""))
                    pos = stop
                    continue
                rule, m = best
                if "begin" in rule:
                    stack.append((rule, re.compile(rule["end"])))
                    tokens.append(Token(n, pos + 1, m.group(0), rule["name"]))
                else:
                    tokens += self._captures(rule, m, n)
                pos = m.end()
        return tokens

    @staticmethod
    def _earliest(rules: list[dict], line: str, pos: int):
        best = None
        for rule in rules:
            m = re.compile(rule.get("match") or rule["begin"]).search(line, pos)
            if m and m.end() > m.start() and (best is None or m.start() < best[1].start()):
                best = (rule, m)
        return best

    @staticmethod
    def _captures(rule: dict, m: re.Match, line: int) -> list[Token]:
        if "captures" not in rule:
            return [Token(line, m.start() + 1, m.group(0), rule["name"])]
        out = []
        for group, cap in sorted(rule["captures"].items(), key=lambda kv: int(kv[0])):
            if m.group(int(group)) is not None:
                out.append(Token(line, m.start(int(group)) + 1, m.group(int(group)), cap["name"]))
        return out
