"""Files from outside: archives cannot write outside their target, checksums are enforced."""

import hashlib
import io
import tarfile

import pytest

from petlab.core.checksums import file_digest, verify_checksum
from petlab.core.errors import PipelineError
from petlab.prepare.downloads import extract_tar


def make_tar(path, members):
    """members: (name, kind, payload) with kind file | symlink | hardlink | fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = payload or ""
            tar.addfile(info)
    return path


def test_a_good_archive_extracts_whole(tmp_path):
    archive = make_tar(
        tmp_path / "good.tar.gz",
        [("images/a.jpg", "file", b"a"), ("images/b.jpg", "file", b"b"), ("images/link.jpg", "symlink", "a.jpg")],
    )
    target = tmp_path / "target"
    assert extract_tar(archive, target) == [target / "images"]
    assert (target / "images" / "b.jpg").read_bytes() == b"b"
    assert (target / "images" / "link.jpg").read_bytes() == b"a"  # a link inside the target is fine
    assert [p.name for p in target.iterdir()] == ["images"]  # no staging folder left


@pytest.mark.parametrize(
    "members",
    [
        [("../escaped.txt", "file", b"x")],
        [("images/../../escaped.txt", "file", b"x")],
        [("images/evil", "symlink", "/etc/passwd")],
        [("images/evil", "symlink", "../../outside")],
        [("images/evil", "hardlink", "/etc/passwd")],
        [("images/pipe", "fifo", None)],
    ],
    ids=["dotdot", "nested-dotdot", "symlink-absolute", "symlink-outside", "hardlink-absolute", "fifo"],
)
def test_members_escaping_the_target_are_refused(tmp_path, members):
    archive = make_tar(tmp_path / "evil.tar.gz", [("images/ok.jpg", "file", b"ok"), *members])
    target = tmp_path / "deep" / "target"
    with pytest.raises(PipelineError, match=f"{archive}: refused to extract"):
        extract_tar(archive, target)
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("evil"))
    assert list(target.iterdir()) == []  # not even the good member: all or nothing


def test_absolute_member_paths_stay_inside_the_target(tmp_path):
    outside = tmp_path / "outside.txt"
    archive = make_tar(tmp_path / "abs.tar.gz", [(str(outside), "file", b"x")])
    extract_tar(archive, tmp_path / "target")
    assert not outside.exists()  # the leading / is stripped: the file lands under the target
    assert (tmp_path / "target" / str(outside).lstrip("/")).read_bytes() == b"x"


def test_a_corrupt_archive_is_an_error(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not a tar")
    with pytest.raises(PipelineError, match="not a readable tar archive"):
        extract_tar(archive, tmp_path / "target")


def test_checksum_mismatch_is_an_error_naming_what(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert file_digest(path) == good
    verify_checksum(path, good.upper(), "train_vit.weights_sha256")
    with pytest.raises(PipelineError, match=f"train_vit.weights_sha256: {path} has sha256 {good}, expected 0+;"):
        verify_checksum(path, "0" * 64, "train_vit.weights_sha256")
