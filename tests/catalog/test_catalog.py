"""Units, shards, retention decisions and locks: the parts of a catalog run that need no cloud."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from imgpipe import locks
from imgpipe.catalog import plan as catalog
from imgpipe.catalog import rotation
from imgpipe.catalog.model import IMAGE_KEY, VERSION_KEY, Catalog, Image, Retention
from imgpipe.cli import EXIT_CODES, app
from imgpipe.errors import CatalogError, LockedError
from imgpipe.cloud.upload import PROFILE_KEY, SOURCE_KEY

runner = CliRunner()


def sha(n: int) -> str:
    return f"{n:064x}"


def image(name: str = "img", versions: int = 3, **retention: object) -> Image:
    return Image(name=name, profiles=["kvm"], clouds=["a"], retention=Retention(**retention),
                 versions=[{"version": f"v{i}", "source": f"/src/{name}-{i}.qcow2", "sha256": sha(i)}
                           for i in range(1, versions + 1)])


def made(version: int, created: str, status: str = "active", hidden: bool = False, name: str = "img-kvm",
         **extra: str) -> dict[str, object]:
    return {"id": f"id-{version}-{created}", "name": name, "status": status, "os_hidden": hidden,
            "created_at": created, PROFILE_KEY: "kvm", SOURCE_KEY: sha(version), VERSION_KEY: f"v{version}",
            IMAGE_KEY: "img", **extra}


def changes(img: Image, group: list[dict[str, object]]) -> dict[str, str]:
    shas = {v.version: v.sha256 for v in img.versions if v.sha256}
    return {a.image_id: a.action for a in rotation.retention("a", img, "kvm", group, shas)}


def test_keep_then_hide_then_expire_by_catalog_order_not_upload_date() -> None:
    img = image(versions=4, keep=1, expire_after=2, expire="delete")
    # v1 was uploaded last (a re-upload), but the catalog says it is the oldest
    group = [made(1, "2026-01-09"), made(2, "2026-01-02"), made(3, "2026-01-03"), made(4, "2026-01-04")]

    assert changes(img, group) == {"id-3-2026-01-03": "hide", "id-2-2026-01-02": "delete",
                                   "id-1-2026-01-09": "delete"}


def test_deactivate_policy_hides_and_never_reactivates() -> None:
    img = image(versions=3, keep=1, expire_after=1, expire="deactivate")
    group = [made(3, "3"), made(2, "2"), made(1, "1", status="deactivated")]

    assert changes(img, group) == {"id-2-2": "deactivate", "id-1-1": "hide"}
    assert changes(img, [made(3, "3", status="deactivated", hidden=True)]) == {}


def test_rollback_shows_the_older_version_again() -> None:
    img = image(versions=1, keep=1)  # v2 was removed from the catalog
    group = [made(2, "2"), made(1, "1", hidden=True)]

    assert changes(img, group) == {"id-1-1": "unhide", "id-2-2": "hide"}


def test_planned_uploads_count_and_unknown_sources_are_oldest() -> None:
    img = image(versions=2, keep=1, expire_after=2, expire="delete")
    group = [made(1, "1"), made(9, "0"), rotation.planned(img, "kvm", "v2", sha(2))]

    assert changes(img, group) == {"id-1-1": "hide", "id-9-0": "delete"}


def test_old_versions_rank_by_label_and_rebuilt_sources_by_content() -> None:
    img = image(versions=3, keep=1, expire_after=2, expire="delete")
    shas = {"v3": sha(3)}  # only the versions to publish are resolved
    group = [made(3, "3"), made(2, "2"), made(1, "1"), {**made(3, "0"), SOURCE_KEY: sha(33)}]
    actions = {a.image_id: a.action for a in rotation.retention("a", img, "kvm", group, shas)}

    assert actions == {"id-2-2": "hide", "id-1-1": "delete", "id-3-0": "delete"}


def test_in_progress_images_are_not_ranked() -> None:
    img = image(versions=2, keep=1)
    assert changes(img, [made(2, "2", status="saving"), made(1, "1")]) == {}


def test_only_catalog_images_are_ours() -> None:
    img = image()
    assert rotation._is_ours(made(1, "1"), img)
    assert not rotation._is_ours(made(1, "1", name="img-kvm-renamed"), img)
    assert not rotation._is_ours(made(1, "1", **{IMAGE_KEY: "other"}), img)
    assert not rotation._is_ours({**made(1, "1"), SOURCE_KEY: ""}, img)
    assert not rotation._is_ours({**made(1, "1"), PROFILE_KEY: "vmware"}, img)
    assert not rotation._is_ours(made(1, "1", status="killed"), img)


def test_not_ready_until_the_newest_is_active_on_every_cloud() -> None:
    img = Image(name="img", profiles=["kvm"], clouds=["a", "b"],
                versions=[{"version": f"v{i}", "source": "/x", "sha256": sha(i)} for i in (1, 2)])
    shas = {"v1": sha(1), "v2": sha(2)}
    done = [made(2, "2")]

    assert "cloud b could not be reached" in rotation.not_ready(img, {"a": done}, shas)
    assert "not active on cloud b" in rotation.not_ready(img, {"a": done, "b": [made(1, "1")]}, shas)
    assert "not active on cloud b" in rotation.not_ready(img, {"a": done, "b": [made(2, "2", status="saving")]}, shas)
    assert "no checksum for its newest version v2" in rotation.not_ready(img, {"a": done, "b": done},
                                                                         {"v1": sha(1)})
    assert rotation.not_ready(img, {"a": done, "b": done}, shas) is None
    assert rotation.not_ready(img, {"a": done, "b": done}, {"v2": sha(2)}) is None


def many(images: int, versions: int, keep: int) -> Catalog:
    return Catalog(images=[image(f"img{i}", versions, keep=keep) for i in range(images)])


@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(1, 7))
def test_shards_cover_every_unit_exactly_once(images: int, versions: int, keep: int, count: int) -> None:
    cat = many(images, versions, keep)
    every = [u.key for u in catalog.units(cat)]
    shards = [[u.key for u in catalog.units(cat, catalog.Shard(i, count))] for i in range(count)]

    assert sorted(k for s in shards for k in s) == sorted(every)
    assert len(every) == images * min(keep, versions)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_from_flag_or_kubernetes_indexed_job() -> None:
    assert catalog.parse_shard("1/4", {}) == catalog.Shard(1, 4)
    assert catalog.parse_shard(None, {}) is None
    assert catalog.parse_shard("0/1", {}) is None
    assert catalog.parse_shard(None, {"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "3"}) == catalog.Shard(2, 3)
    assert catalog.parse_shard("0/2", {"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2"}) == catalog.Shard(0, 2)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="expected I/N"):
            catalog.parse_shard(bad, {})
    with pytest.raises(ValueError, match="JOB_COMPLETIONS is not"):
        catalog.parse_shard(None, {"JOB_COMPLETION_INDEX": "0"})


def test_shards_share_a_cloud_but_rotation_needs_it_alone(tmp_path: Path) -> None:
    with locks.clouds(tmp_path, ["a", "b"], "0/2"), locks.clouds(tmp_path, ["a"], "1/2"):
        with pytest.raises(LockedError, match="shard 0/2"):
            with locks.clouds(tmp_path, ["b"], "0/2"):
                pass
        with pytest.raises(LockedError, match="cloud a"):
            with locks.clouds(tmp_path, ["a"], None):
                pass
    with locks.clouds(tmp_path, ["a"], None):
        with pytest.raises(LockedError, match="another imgpipe run holds the lock for cloud a"):
            with locks.clouds(tmp_path, ["a"], "0/2"):
                pass


CATALOG = """\
images:
  - name: img
    profiles: [kvm]
    clouds: [a]
    versions:
      - {version: "1", source: /nonexistent.qcow2, sha256: "%s"}
""" % sha(1)


def test_cli_validate(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CATALOG)
    result = runner.invoke(app, ["catalog", "validate", str(path)])
    assert result.exit_code == 0 and "1 images, 1 versions to publish, clouds a" in result.stdout

    path.write_text(CATALOG.replace("[kvm]", "[kvm, esx]"))
    result = runner.invoke(app, ["catalog", "validate", str(path), "--json"])
    assert result.exit_code == EXIT_CODES[CatalogError]
    assert f"{path}:3: images.0.profiles: unknown profile 'esx'" in result.stderr


def test_cli_sync_refuses_while_another_run_holds_a_cloud(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CATALOG)
    with locks.held(tmp_path / "locks" / "a.lock", what="test"):
        result = runner.invoke(app, ["catalog", "sync", str(path), "--cache-dir", str(tmp_path)])
    assert result.exit_code == EXIT_CODES[LockedError]
    assert "another imgpipe run holds the lock for cloud a" in result.stderr


def test_cli_rejects_a_bad_shard(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CATALOG)
    result = runner.invoke(app, ["catalog", "sync", str(path), "--shard", "2/2"])
    assert result.exit_code == 2 and "expected I/N" in result.stderr


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_are_valid() -> None:
    result = runner.invoke(app, ["catalog", "validate", str(EXAMPLES / "catalog.yaml")])
    assert result.exit_code == 0, result.stderr
    for manifest in ("kubernetes/catalog-refresh.yaml", "github-actions/catalog-refresh.yml"):
        assert all(yaml.safe_load_all((EXAMPLES / manifest).read_text()))
    indexed = list(yaml.safe_load_all((EXAMPLES / "kubernetes/catalog-refresh.yaml").read_text()))[1]
    job = indexed["spec"]["jobTemplate"]["spec"]
    env = {e["name"]: e["value"] for e in job["template"]["spec"]["containers"][0]["env"]}
    assert job["completionMode"] == "Indexed" and env["JOB_COMPLETIONS"] == str(job["completions"])
