from collections.abc import Callable
from typing import Any

from extplugtest.cluster._header import ClusterMac
from extplugtest.dtls._datapath import DtlsEngine

class ClusterEngine(DtlsEngine):
    def cluster(
        self,
        own_node_id: int,
        management_fd: int,
        management: Any,
        *,
        backward: bool = True,
        mac: bool = False,
        batch: bool = True,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None: ...
    def flush_cluster(self) -> None: ...
    def set_node_mac(
        self, node_id: int, write: ClusterMac | None, read: ClusterMac | None
    ) -> None: ...
    def mac_counters(self) -> dict[int, dict[str, int]]: ...
    def set_node(self, node_id: int, address: tuple[Any, ...] | None) -> None: ...
    def nodes(self) -> dict[int, tuple[Any, ...]]: ...
    def on_management_readable(self) -> None: ...
    def cluster_counters(self) -> dict[str, int]: ...
