"""Image names and platforms as `krate image pull` reads them (pure functions, no network)."""

from __future__ import annotations

import pytest

from krate.errors import UsageError
from krate.images.pull import Platform, host_platform, parse_platform, parse_reference
from krate.registry import transport_pull
from krate.registry.transport_http import Failure

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "shown"),
    [
        ("ghcr.io/me/app:1.0", "ghcr.io", "me/app", "1.0", None, "ghcr.io/me/app:1.0"),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None, "localhost:5000/x:latest"),
        (f"127.0.0.1:5000/a/b@sha256:{HEX}", "127.0.0.1:5000", "a/b", None, f"sha256:{HEX}",
         f"127.0.0.1:5000/a/b@sha256:{HEX}"),
        (f"r.io/a:t@sha256:{HEX}", "r.io", "a", "t", f"sha256:{HEX}", f"r.io/a@sha256:{HEX}"),
        ("alpine", "docker.io", "library/alpine", "latest", None,
         "docker.io/library/alpine:latest"),
        ("me/tool:2", "docker.io", "me/tool", "2", None, "docker.io/me/tool:2"),
        ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None,
         "docker.io/library/debian:12"),
        ("[::1]:5000/x:1", "[::1]:5000", "x", "1", None, "[::1]:5000/x:1"),
    ],
)  # fmt: skip
def test_references(text, registry, repository, tag, digest, shown):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert str(ref) == shown
    assert ref.reference == (digest or tag)


def test_docker_hub_is_reached_at_its_api_host():
    assert parse_reference("alpine").endpoint == "registry-1.docker.io"
    assert parse_reference("ghcr.io/a/b").endpoint == "ghcr.io"


@pytest.mark.parametrize(
    "text",
    ["ghcr.io/Me/App:1", "ghcr.io/a@sha256:short", "ghcr.io/a@md5:" + "0" * 32, "ghcr.io/a:bad tag",
     "http://ghcr.io/a:1", "ghcr.io/", f"ghcr.io/a@sha256:{HEX}\nx", "ghcr.io/a:-x"],
)  # fmt: skip
def test_bad_references_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_reference(text)


def test_platforms():
    assert parse_platform("linux/arm/v7") == Platform("linux", "arm", "v7")
    assert str(parse_platform("Linux/AMD64")) == "linux/amd64"
    for bad in ("amd64", "linux/", "linux/amd64/v8/x", "linux/a b", "../x"):
        with pytest.raises(UsageError):
            parse_platform(bad)
    assert host_platform("x86_64") == Platform("linux", "amd64")
    assert host_platform("arm64") == Platform("linux", "arm64")  # a Mac: a Linux image
    assert host_platform("armv7l") == Platform("linux", "arm", "v7")
    with pytest.raises(UsageError, match="--platform"):
        host_platform("vax")


def entry(os_: str, arch: str, variant: str | None = None, **extra) -> dict:
    plat = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": transport_pull.OCI_MANIFEST, "digest": "sha256:" + arch[0] * 64,
            "size": 1, "platform": plat, **extra}  # fmt: skip


def test_choosing_a_platform_from_an_index():
    index = {
        "manifests": [
            entry("unknown", "unknown"),  # a build attestation
            entry("linux", "arm", "v6"),
            entry("linux", "arm", "v7"),
            entry("linux", "arm64", "v8"),
            entry("linux", "amd64"),
        ]
    }
    choose = transport_pull.choose
    assert choose(index, {"os": "linux", "architecture": "amd64"})["platform"]["architecture"] == (
        "amd64"
    )
    assert choose(index, {"os": "linux", "architecture": "arm"})["platform"]["variant"] == "v7"
    got = choose(index, {"os": "linux", "architecture": "arm", "variant": "v6"})
    assert got["platform"]["variant"] == "v6"
    assert choose(index, {"os": "linux", "architecture": "arm64"})["platform"]["variant"] == "v8"
    with pytest.raises(Failure) as caught:
        choose(index, {"os": "windows", "architecture": "amd64"})
    assert str(caught.value) == (
        "the image has no windows/amd64 variant; available: linux/amd64, linux/arm/v6, "
        "linux/arm/v7, linux/arm64/v8 (choose one with --platform)"
    )
