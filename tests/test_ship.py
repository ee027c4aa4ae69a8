"""What ships beside the module: the man page, shell completion for bash and zsh, the sdist and wheel
(built, checked by twine, installed into a fresh venv and run), and the documentation's links."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import IMAGE, LABEL, REPO, RUN, write_config

import haproxy_docker_config as hdc

PROG = "haproxy-docker-config"
BIN = Path(sys.executable).parent
MANPAGE = REPO / "man" / f"{PROG}.1"


def _shell_files():
    """scripts/build-shell-files.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("build_shell_files", REPO / "scripts" / "build-shell-files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(text: str) -> str:
    return " ".join(text.split())


def help_text() -> str:
    """--help as the user sees it, without line wrapping (argparse breaks lines at hyphens too)."""
    out = subprocess.run([str(BIN / PROG), "--help"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, COLUMNS="1000")).stdout
    return out


def help_entries(text: str) -> list[str]:
    """The option entries of --help ('-l LISTENER, --listen LISTENER Perform ...'), one string each."""
    body = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    return [_words(entry) for entry in re.split(r"\n(?=  -)", body)]


def man_text(page: Path) -> str:
    """The page as man renders it, one paragraph per line (no hyphenation, no justification)."""
    return subprocess.run(["man", "--nh", "--nj", "-l", str(page)], capture_output=True, text=True, check=True,
                          env=dict(os.environ, MANWIDTH="1000", PAGER="cat")).stdout


def man_sections(text: str) -> dict[str, str]:
    """Rendered man page sections by heading (NAME, SYNOPSIS, ...)."""
    parts = re.split(r"^([A-Z][A-Z ]+)\n", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


# --- the man page ---------------------------------------------------------------------------------------------

def test_the_man_page_is_generated_from_this_parser() -> None:
    shell_files = _shell_files()
    committed = MANPAGE.read_text()
    fresh = shell_files.manpage(shell_files.manpage_date(committed))
    assert committed == fresh, "man/haproxy-docker-config.1 is stale: run scripts/build-shell-files.py"


def test_the_man_page_says_what_help_says() -> None:
    """Every part of --help, word for word: usage, description, each option with its help, exit statuses."""
    help_out = help_text()
    sections = man_sections(man_text(MANPAGE))
    assert set(sections) >= {"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"}
    usage, description, rest = help_out.split("\n\n", 2)
    assert _words(sections["SYNOPSIS"]) == _words(usage.removeprefix("usage: "))
    assert _words(sections["DESCRIPTION"]) == _words(description)
    options = [_words(entry) for entry in re.split(r"\n\n", sections["OPTIONS"].strip())]
    assert options == help_entries(help_out)
    assert len(options) == len(hdc.build_parser()._actions)  # noqa: SLF001 (every option is there once)
    epilog = help_out.split("\nexit status:\n", 1)[1]
    assert sections["EXIT STATUS"].rstrip("\n").splitlines() == [" " * 7 + line for line in epilog.splitlines()]


# --- shell completion -----------------------------------------------------------------------------------------

def complete_bash(line: str) -> list[str]:
    """What bash offers for `line` (cursor at its end) with completion/haproxy-docker-config loaded."""
    script = (f'source {REPO / "completion" / PROG}\n'
              'COMP_LINE="$1"; COMP_POINT=${#1}; read -r -a COMP_WORDS <<<"$1"\n'
              '[[ "$1" == *" " ]] && COMP_WORDS+=("")\n'
              'COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
              f'_python_argcomplete {PROG}\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script, "bash", line], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    # bash replaces only the part of the word after its last COMP_WORDBREAKS character (`:` of ID:PORT):
    # put that part back, to compare what ends up on the command line
    word = line.split(" ")[-1]
    kept = word[:max(word.rfind(c) for c in "\"'><=;|&(:") + 1]
    return sorted(kept + reply.strip() for reply in out.stdout.splitlines() if reply.strip())


def complete_zsh(line: str) -> list[str]:
    """What the zsh shim hands to zsh's completion system (`_describe`) for `line`, values only."""
    script = (f'compdef() {{ : }}\nsource {REPO / "completion" / ("_" + PROG)}\n'
              '_describe() { print -rl -- "${(@P)2}" }\n'
              'BUFFER="$1"; CURSOR=${#1}; words=(${=1}); _python_argcomplete\n')
    out = subprocess.run(["zsh", "-f", "-c", script, "zsh", line], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    values = [re.split(r"(?<!\\):", entry, maxsplit=1)[0].replace("\\:", ":") for entry in out.stdout.splitlines()]
    return sorted(value for value in values if value)


@pytest.fixture
def config(tmp_path) -> Path:
    """Two listeners (a listen and a backend) and a frontend, which is no listener."""
    cfg = write_config(tmp_path, listener="alpha").path
    cfg.write_text(cfg.read_text() + "\nbackend beta\n    server s1 127.0.0.1:1\n\nfrontend gamma\n    bind :1\n")
    return cfg


@pytest.mark.parametrize("complete", [complete_bash, complete_zsh], ids=["bash", "zsh"])
def test_completion_offers_options_and_listeners(complete, config) -> None:
    assert complete(f"{PROG} --wa") == ["--watch"]
    assert complete(f"{PROG} --h") == ["--haproxy-bin", "--haproxy-container", "--help", "--host-ip",
                                       "--hot-restart"]
    assert complete(f"{PROG} -f {config} -l ") == ["alpha", "beta"]
    assert complete(f"{PROG} -f {config} --listen b") == ["beta"]
    assert complete(f"{PROG} --log-format j") == ["json"]


@pytest.fixture
def named_containers(docker_client: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """A running and a stopped container with names no one else uses: (running, stopped)."""
    stem = f"hdc-comp-{uuid.uuid4().hex[:8]}"
    made = [docker_client.containers.run(IMAGE, detach=True, name=f"{stem}-up", labels={LABEL: RUN}),
            docker_client.containers.create(IMAGE, name=f"{stem}-down", labels={LABEL: RUN})]
    yield f"{stem}-up", f"{stem}-down"
    for container in made:
        container.remove(force=True)


@pytest.mark.parametrize("complete", [complete_bash, complete_zsh], ids=["bash", "zsh"])
def test_completion_offers_container_names_from_docker(complete, named_containers) -> None:
    up, down = named_containers
    stem = up.rsplit("-", 1)[0]
    assert complete(f"{PROG} -l web --add {stem}") == [up]  # running ones only: a stopped one cannot be added
    assert complete(f"{PROG} -l web --add abc:8080,{stem}") == [f"abc:8080,{up}"]  # the last of the id list
    assert complete(f"{PROG} -l web --delete {stem}") == [down, up]  # a stopped container may still be a server
    assert complete(f"{PROG} -l web -c {stem}-d") == [down]
    assert complete(f"{PROG} --haproxy-container {stem}") == [up]


def test_completion_gives_up_on_an_engine_that_does_not_answer(tmp_path, named_containers) -> None:
    """An engine that accepts the connection and never answers: no names, no error, and the shell gets its
    prompt back (after the completion's one-second timeout; the subprocess deadline here is generous)."""
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(tmp_path / "docker.sock"))
        silent.listen(8)
        stem = named_containers[0].rsplit("-", 1)[0]
        assert complete_bash(f"{PROG} --docker-url unix://{tmp_path}/docker.sock --add {stem}") == []
    assert complete_bash(f"{PROG} --docker-url unix://{tmp_path}/absent.sock --add {stem}") == []
    assert complete_bash(f"{PROG} --docker-url unix://{tmp_path}/absent.sock --add ") == []


# --- packaging ------------------------------------------------------------------------------------------------

def _run(*command: str, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` (an sdist, then the wheel built from that sdist) of the files git knows."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    files = _run("git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    _run(sys.executable, "-m", "build", "--outdir", str(out), str(source), cwd=out)  # a build/ here would shadow it
    return out


def test_sdist_and_wheel_pass_twine_check(dist: Path) -> None:
    artifacts = sorted(p.name for p in dist.iterdir())
    assert artifacts == [f"haproxy_docker_config-{hdc.__version__}-py3-none-any.whl",
                         f"haproxy_docker_config-{hdc.__version__}.tar.gz"]
    checked = _run(sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir()))
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_wheel_installs_a_working_command_with_man_page_and_completion(dist: Path, tmp_path, config,
                                                                           make_container) -> None:
    """A fresh venv, the wheel and its dependencies from the index: the command runs a real --add (Docker,
    Augeas, haproxy -c), `man` finds its page from PATH, the completion files are where shells look."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    wheel = next(dist.glob("*.whl"))
    _run(str(env_dir / "bin" / "pip"), "install", "-q", str(wheel))
    command = env_dir / "bin" / PROG
    assert _run(str(command), "--version").stdout == f"{PROG} {hdc.__version__}\n"
    assert _run(str(command), "--help", env=dict(os.environ, COLUMNS="1000")).stdout == help_text()
    container = make_container()
    added = _run(str(command), "-f", str(config), "-l", "alpha", "--add", container.short_id)
    assert added.stdout.startswith(f"{container.short_id:<20}\tbalanced\t127.0.0.1:")
    shown = _run(str(command), "-f", str(config), "-l", "alpha", "--show").stdout
    assert shown.startswith(f"{container.short_id} 127.0.0.1:")
    share = env_dir / "share"
    assert (share / "man" / "man1" / f"{PROG}.1").read_text() == MANPAGE.read_text()
    found = _run("man", "-w", PROG, env=dict(os.environ, PATH=f"{env_dir / 'bin'}:/usr/bin:/bin", MANPATH=""))
    assert found.stdout.strip() == str(share / "man" / "man1" / f"{PROG}.1")
    for shipped, installed in ((PROG, "bash-completion/completions"), (f"_{PROG}", "zsh/site-functions")):
        assert (share / installed / shipped).read_text() == (REPO / "completion" / shipped).read_text()


# --- the documentation ----------------------------------------------------------------------------------------

PAGES = sorted([REPO / "README.md", REPO / "examples" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXCERPT = re.compile(r"^<!-- excerpt: (\S+) -->\n```[a-z]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """The #anchors GitHub makes of a page's headings (ATX `#` and setext underlined ones)."""
    lines = page.read_text().splitlines()
    titles = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
    titles += [lines[i - 1].strip() for i in range(1, len(lines))
               if re.fullmatch(r"(=+|-+)", lines[i]) and lines[i - 1].strip() and not lines[i - 1].startswith("|")]
    found: set[str] = set()
    for title in titles:
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        found.add(slug if slug not in found else next(f"{slug}-{n}" for n in range(1, 99) if f"{slug}-{n}" not in found))
    return found


def test_every_link_between_readme_docs_and_examples_resolves() -> None:
    broken, seen = [], 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto: leave this checkout
                continue
            seen += 1
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor})")
    assert broken == [] and seen > 50


def test_every_docs_page_is_linked_from_the_readme_or_another_page() -> None:
    linked = {(page.parent / target.partition("#")[0]).resolve()
              for page in PAGES for target in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", target)}
    assert [p.relative_to(REPO).as_posix() for p in PAGES if p.resolve() not in linked and p.name != "README.md"] == []


def test_excerpts_in_the_docs_are_what_the_example_files_say() -> None:
    """A code block marked `<!-- excerpt: FILE -->` is a run of whole lines of FILE, word for word."""
    count = 0
    for page in PAGES:
        for name, block in EXCERPT.findall(page.read_text()):
            count += 1
            lines, source = block.splitlines(), (REPO / name).read_text().splitlines()
            runs = [i for i in range(len(source) - len(lines) + 1) if source[i:i + len(lines)] == lines]
            assert runs, f"{page.relative_to(REPO)}: the excerpt of {name} is not in it:\n{block}"
    assert count >= 7


def test_every_example_file_is_run_by_a_test_the_examples_readme_names() -> None:
    """examples/README.md's table names, for each file, tests that exist and use it (its name or its
    directory appears in the test's code: the Compose tests copy their whole directory)."""
    import test_examples

    table = (REPO / "examples" / "README.md").read_text()
    rows = dict(re.findall(r"^\| \[([^\]]+)\]\([^)]+\) \|[^|]*\| (.+) \|$", table, re.MULTILINE))
    files = sorted(p.relative_to(REPO / "examples").as_posix() for p in (REPO / "examples").rglob("*")
                   if p.is_file() and p.name != "README.md")
    assert sorted(rows) == files
    for name, tests in rows.items():
        for test in re.findall(r"`(test_\w+)`", tests):
            function = getattr(test_examples, test)
            fixtures = [getattr(test_examples, arg) for arg in inspect.signature(function).parameters
                        if hasattr(test_examples, arg)]  # the module's own fixtures that the test uses
            source = "".join(inspect.getsource(inspect.unwrap(f)) for f in [function, *fixtures])
            assert any(f'"{part}"' in source for part in (Path(name).name, *Path(name).parent.parts)), (name, test)


def test_the_readme_is_a_landing_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for heading in ("Quick start", "Example", "Install", "Features", "Exit status", "Licence"):
        assert f"\n{heading}\n" in readme
    assert "scripts/demo.sh" in readme and "scripts/test.sh" in readme and "Andreas Schmidt" in readme
