"""The Homebrew formula: it parses, its resources are exactly the lock, its `test do` passes here.

The formula's test block is read from the .rb and carried out statement by
statement against the installed `krate` (a statement this file does not know
fails the test, so the block cannot drift away from what is checked here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from krate import __version__
from tests.conftest import KRATE

ROOT = Path(__file__).resolve().parent.parent
FORMULA = ROOT / "Formula" / "krate.rb"
LOCK = ROOT / "Formula" / "requirements.lock"
LINUX_ONLY = {"secretstorage", "jeepney", "cryptography", "cffi", "pycparser"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries() -> list[tuple[str, str, str, str]]:
    """(name, version, sha256, url) per locked package, in file order."""
    rows = []
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})\s+#\s+(\S+)", line)
        assert match, f"lock line not understood: {line!r}"
        rows.append(match.groups())
    return rows


def formula_resources() -> list[tuple[str, str, str]]:
    text = FORMULA.read_text()
    blocks = re.findall(r'^  resource "([^"]+)" do\n(.*?)^  end$', text, re.M | re.S)
    resources = []
    for name, body in blocks:
        url = re.search(r'^    url "([^"]+)"$', body, re.M)
        sha = re.search(r'^    sha256 "([0-9a-f]{64})"$', body, re.M)
        assert url and sha, f"resource {name} lacks url or sha256"
        resources.append((name, url.group(1), sha.group(1)))
    return resources


def test_formula_parses_with_ruby():
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (scripts/test installs it: apt-get install ruby)")
    done = subprocess.run([ruby, "-c", str(FORMULA)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Syntax OK" in done.stdout


def test_formula_resources_are_exactly_the_lock():
    locked = [(name, url, sha) for name, _version, sha, url in lock_entries()]
    assert formula_resources() == locked


def test_lock_pins_every_runtime_dependency_as_an_sdist_and_nothing_linux_only():
    entries = lock_entries()
    names = [name for name, *_ in entries]
    assert len(names) == len(set(names)), "a package is locked twice"
    assert not LINUX_ONLY & set(names), "keyring's Linux-only dependencies must stay out"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        top = canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
        assert top in names, f"{top} (from pyproject.toml) is not in the lock"
    for name, version, _sha, url in entries:
        assert url.startswith("https://files.pythonhosted.org/packages/"), url
        filename = url.rsplit("/", 1)[1]
        stem = re.sub(r"\.(tar\.gz|zip)$", "", filename)
        assert stem != filename, f"{name}: not a source distribution: {url}"
        project_name, _, release = stem.rpartition("-")
        assert (canonical(project_name), release) == (name, version), url


def test_locked_versions_satisfy_pyproject():
    packaging = pytest.importorskip("packaging.requirements")
    versions = {name: version for name, version, *_ in lock_entries()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = packaging.Requirement(text)
        version = versions[canonical(requirement.name)]
        assert requirement.specifier.contains(version), f"{version} breaks {text}"


def test_update_script_agrees_the_formula_is_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update-formula"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_update_script_fixes_a_stale_resource(tmp_path):
    """Regenerating from the lock restores a resource someone edited by hand."""
    copy = tmp_path / "repo"
    (copy / "Formula").mkdir(parents=True)
    (copy / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "update-formula", copy / "scripts")
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copy(LOCK, copy / "Formula")
    original = FORMULA.read_text()
    name, _url, sha = formula_resources()[0]
    (copy / "Formula" / "krate.rb").write_text(original.replace(sha, "f" * 64, 1))
    script = [sys.executable, str(copy / "scripts" / "update-formula")]
    stale = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and "does not match the lock" in stale.stdout
    subprocess.run(script, check=True, capture_output=True)
    assert (copy / "Formula" / "krate.rb").read_text() == original


def test_formula_installs_the_committed_completions_from_the_tarball():
    text = FORMULA.read_text()
    installed = re.findall(r'_completion\.install "([^"]+)"', text)
    assert sorted(installed) == [
        "completions/_krate",
        "completions/krate.bash",
        "completions/krate.fish",
    ]
    for path in installed:
        assert (ROOT / path).is_file(), path
    sdist = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert "completions" in sdist["targets"]["sdist"]["include"]
    assert re.search(r"^  depends_on :macos$", text, re.M)
    assert re.search(r'^  depends_on "python@3\.1[23]"$', text, re.M)
    assert "virtualenv_install_with_resources" in text


def _test_block() -> list[str]:
    text = FORMULA.read_text()
    match = re.search(r"^  test do\n(.*?)^  end$", text, re.M | re.S)
    assert match, "the formula has no test block"
    return match.group(1).splitlines()


def _words(args: str, testpath: Path) -> list[str]:
    """Ruby string literals and `testpath/"x"` operands, in order."""
    words = []
    for literal, path in re.findall(r'"((?:[^"\\]|\\.)*)"|testpath/"([^"]+)"', args):
        words.append(str(testpath / path) if path else literal)
    return [w for w in words if w]


def _interpolate(text: str, testpath: Path) -> str:
    text = text.replace("#{bin}/krate", KRATE).replace("#{testpath}", str(testpath))
    text = text.replace("#{version}", __version__)
    return bytes(text, "utf-8").decode("unicode_escape")


def test_formula_test_block_passes_against_the_installed_krate(tmp_path, monkeypatch):
    """Each statement of `test do`, carried out here as Homebrew would (HOME=testpath)."""
    testpath = tmp_path / "testpath"
    testpath.mkdir()
    monkeypatch.delenv("KRATE_HOME")
    env = {"HOME": str(testpath), "PATH": "/usr/bin:/bin"}
    lines = iter(_test_block())
    checked = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if m := re.fullmatch(r'ENV\["(\w+)"\] = testpath/"([^"]+)"', line):
            env[m.group(1)] = str(testpath / m.group(2))
        elif m := re.fullmatch(r'\(testpath/"([^"]+)"\)\.write <<~(\w+)', line):
            body = []
            for inner in lines:
                if inner.strip() == m.group(2):
                    break
                body.append(inner)
            indent = min(len(b) - len(b.lstrip()) for b in body if b.strip())
            (testpath / m.group(1)).write_text("\n".join(b[indent:] for b in body) + "\n")
        elif m := re.fullmatch(r'\(testpath/"([^"]+)"\)\.write "((?:[^"\\]|\\.)*)"', line):
            (testpath / m.group(1)).write_text(_interpolate(m.group(2), testpath))
        elif m := re.fullmatch(r'system bin/"krate", (.*)', line):
            done = subprocess.run(
                [KRATE, *_words(m.group(1), testpath)], env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, (line, done.stderr)
            checked += 1
        elif m := re.fullmatch(
            r'assert_match "((?:[^"\\]|\\.)*)", shell_output\("([^"]*(?:\\.[^"]*)*)"(?:, (\d+))?\)',
            line,
        ):
            expected = _interpolate(m.group(1), testpath)
            command = _interpolate(m.group(2), testpath)
            done = subprocess.run(
                command, shell=True, env=env, capture_output=True, text=True, cwd=testpath
            )
            assert done.returncode == int(m.group(3) or 0), (line, done.stdout, done.stderr)
            assert expected in done.stdout, (line, done.stdout)
            checked += 1
        else:
            pytest.fail(f"formula test statement this test does not understand: {line}")
    assert checked >= 4, "the formula's test block checks too little"
    assert (testpath / "krate-home" / "krate.db").exists(), "the test wrote no event"


def test_release_sdist_is_reproducible_and_carries_the_completions(tmp_path):
    """The formula downloads the release sdist: it holds completions/ and rebuilds identically."""
    pytest.importorskip("hatchling")
    built = []
    for name in ("one", "two"):
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path / name)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        (tarball,) = (tmp_path / name).glob("krate-*.tar.gz")
        built.append(tarball)
    assert built[0].name == f"krate-{__version__}.tar.gz"
    assert built[0].read_bytes() == built[1].read_bytes(), "the sdist is not reproducible"
    with tarfile.open(built[0]) as archive:
        names = set(archive.getnames())
    installed = re.findall(r'(?:_completion|man1)\.install "([^"]+)"', FORMULA.read_text())
    assert len(installed) == 4
    for path in installed:
        assert f"krate-{__version__}/{path}" in names, f"{path} is not in the sdist"
    assert re.search(
        rf'^  url "https://github\.com/krate-dev/krate/releases/download/v{re.escape(__version__)}/'
        rf'krate-{re.escape(__version__)}\.tar\.gz"$',
        FORMULA.read_text(),
        re.M,
    ), "the formula's url is not this version's release sdist"
