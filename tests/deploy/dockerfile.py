"""Read the Dockerfile and .dockerignore the way Docker does, enough to replay the image's steps.

No Docker engine runs here, so the tests replay what ``docker build`` would do: build the context that
``.dockerignore`` lets through, then run the build stage's ENV / WORKDIR / COPY / RUN in a directory that
stands in for the image's root filesystem. Only the instructions our Dockerfile uses are understood; any
other instruction in the build stage fails the replay, so the Dockerfile cannot drift past what the test
really performs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# The python:3.11-slim images' own environment (before our ENV lines).
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # the rest of the (continuation-joined) line

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None (shell form)."""
        text = self.value.strip()
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        assert isinstance(parsed, list), text
        assert all(isinstance(item, str) for item in parsed), text
        return parsed

    def flags(self) -> tuple[dict[str, str], str]:
        """Leading ``--name=value`` flags (COPY --from, HEALTHCHECK --interval) and the rest."""
        rest = self.value.strip()
        found: dict[str, str] = {}
        while match := re.match(r"--([a-z-]+)=(\S+)\s+", rest):
            found[match.group(1)] = match.group(2)
            rest = rest[match.end() :]
        return found, rest


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with comments dropped and backslash continuations joined (comment lines inside too)."""
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if pending.strip():
            yield pending.strip()
        pending = ""
    if pending.strip():
        yield pending.strip()


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) with their defaults, and the stages in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = value.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            key, _, default = value.partition("=")
            args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, value.strip()))
    return args, stages


def load() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def _expand(value: str, scope: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m.group(1) or m.group(2), ""), value)


def env_pairs(instruction: Instruction, env: Mapping[str, str]) -> dict[str, str]:
    """``ENV a=1 b=$a`` → {a: 1, b: 1}, expanding ``$VAR``/``${VAR}`` from ``env`` as Docker does."""
    out: dict[str, str] = {}
    for token in shlex.split(instruction.value):
        key, sep, value = token.partition("=")
        assert sep, f"use ENV key=value, got {token!r}"
        out[key] = _expand(value, {**env, **out})
    return out


# --- .dockerignore -------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's (Go filepath.Match + ``**``) pattern as a regex over slash-separated relative paths."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per pattern line, in order; the last matching one decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def is_excluded(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A pattern matching the path or any parent directory of it applies (Docker's patternmatcher)."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exception, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not exception
    return excluded


def build_context(dest: Path, repo: Path = REPO) -> Path:
    """Copy what ``.dockerignore`` lets into the build context to ``dest`` (symlinks kept as links)."""
    rules = ignore_rules(DOCKERIGNORE.read_text()) if DOCKERIGNORE.exists() else []
    exceptions = [regex.pattern for exception, regex in rules if exception]
    for root, dirs, files in os.walk(repo):
        rel_root = os.path.relpath(root, repo)
        rel_root = "" if rel_root == "." else rel_root
        kept = []
        for name in dirs:
            rel = f"{rel_root}/{name}" if rel_root else name
            if os.path.islink(os.path.join(root, name)):
                files.append(name)  # a symlink to a directory is copied as a link
            elif not is_excluded(rel, rules) or any(p.startswith(re.escape(rel)) for p in exceptions):
                kept.append(name)  # excluded dirs are entered only if an exception may re-include inside
        dirs[:] = kept
        for name in files:
            rel = f"{rel_root}/{name}" if rel_root else name
            if is_excluded(rel, rules):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = Path(root) / name
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                shutil.copy2(source, target)
    return dest


# --- replaying a stage ---------------------------------------------------------------------------------


class Replay:
    """Replays one stage in ``root`` (standing in for the image's ``/``) from a build ``context`` directory.

    Every absolute container path the stage names (WORKDIR, COPY destinations, ENV paths) is mapped under
    ``root``; stages of one build share ``root``, each starting from the base image's environment.
    """

    def __init__(self, root: Path, context: Path, base_env: Mapping[str, str]) -> None:
        self.root = root
        self.context = context
        self.env: dict[str, str] = dict(base_env)
        self.workdir = "/"

    def host(self, container_path: str) -> Path:
        """Where a container path lives under ``root``."""
        absolute = container_path if container_path.startswith("/") else f"{self.workdir}/{container_path}"
        return self.root / os.path.normpath(absolute).lstrip("/")

    def run_stage(self, stage: Stage, host_env: Mapping[str, str], *, final: bool = False) -> None:
        """Perform a stage: ENV, WORKDIR, COPY and RUN (``sh -c``) in order.

        In the final stage, RUN (creating the system user) is not replayed: it needs root and would change
        this machine; tests check its effect (the volume directory and USER) from the text instead.
        Instructions that only describe the image (USER, VOLUME, EXPOSE, HEALTHCHECK, …) are read by the
        tests, not replayed. Anything else fails, so the Dockerfile cannot outgrow the replay.
        """
        described = {"LABEL", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "STOPSIGNAL"}
        for instruction in stage.instructions:
            keyword = instruction.keyword
            if keyword == "ENV":
                for key, value in env_pairs(instruction, self.env).items():
                    self.env[key] = self.map_env_path(value)
            elif keyword == "WORKDIR":
                self.workdir = os.path.normpath(os.path.join(self.workdir, instruction.value))
                self.host(self.workdir).mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                self.copy(instruction)
            elif keyword == "VOLUME":
                for path in instruction.exec_form() or instruction.value.split():
                    self.host(path).mkdir(parents=True, exist_ok=True)
            elif keyword == "RUN" and not final:
                subprocess.run(
                    ["sh", "-c", instruction.value],
                    cwd=self.host(self.workdir),
                    env={**host_env, **{k: v for k, v in self.env.items() if k != "PATH"}},
                    check=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            elif keyword not in described and not (final and keyword == "RUN"):
                raise AssertionError(f"the replay does not understand {keyword}")

    def map_env_path(self, value: str) -> str:
        """An ENV value that is an absolute path, or a PATH-like list, with its container paths mapped."""
        if not value.startswith("/"):
            return value
        items = value.split(":")
        if len(items) == 1:
            return str(self.host(value))
        # A search path: map the items that are ours (exist under root); keep the base image's own ones.
        return ":".join(str(self.host(i)) if self.host(i).exists() else i for i in items)

    def copy(self, instruction: Instruction) -> None:
        flags, rest = instruction.flags()
        *sources, dest = shlex.split(rest)
        if "from" in flags:
            # Virtualenvs are not relocatable: the runtime stage must take them to the same path, where
            # the replay (one root for every stage) already has them.
            assert set(flags) == {"from"}, rest
            assert sources == [dest], f"COPY --from must keep the path: {rest}"
            assert self.host(dest).exists(), f"COPY --from: {dest} was not built"
            return
        assert not flags, f"COPY flags are not replayed here: {flags}"
        target = self.host(dest)
        into_dir = dest.endswith("/") or len(sources) > 1
        for source in sources:
            src = self.context / source
            assert src.exists() or src.is_symlink(), (
                f"COPY {source}: not in the build context (.dockerignore?)"
            )
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            else:
                final = target / src.name if into_dir else target
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, final)
