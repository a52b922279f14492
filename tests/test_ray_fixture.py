import pytest
pytestmark = pytest.mark.ray
def test_two_nodes(ray_cluster, ray_session):
    ray = ray_session
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert ray.cluster_resources()["CPU"] == 4
