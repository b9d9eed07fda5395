"""The Serve config example of docs/cluster.md builds the application it describes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray", reason="the cluster needs Ray: pip install -e '.[ray]'")

from tfmux import ray as tfmux_ray

DOC = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"


def test_serve_config_example_builds(tmp_path: Path) -> None:
    (example,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    (app,) = yaml.safe_load(example)["applications"]
    assert app["import_path"] == "tfmux.ray:build"
    (tmp_path / "fraud" / "1").mkdir(parents=True)
    args = {**app["args"], "model_repositories": [str(tmp_path)]}
    config, cluster, gateway_cpus = tfmux_ray.settings(args)
    assert [m.name for m in config.models] == ["fraud"]
    assert all(m.load == "lazy" for m in config.models)
    assert (config.host, config.http_port, config.grpc_port) == ("0.0.0.0", 8501, 8500)
    assert config.memory_budget_bytes == 4_000_000_000
    assert cluster.replica_cpus == 2 and gateway_cpus == 0
    options = cluster.deployment_options()
    assert options["autoscaling_config"]["max_replicas"] == 8
    assert "num_replicas" not in options
    assert tfmux_ray.build(args) is not None


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="replicaz"):
        tfmux_ray.settings({"model_repositories": [str(tmp_path)], "replicaz": 3})
