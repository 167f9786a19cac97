from typing import Any

from extplugtest.dtls._datapath import DtlsEngine

class ClusterEngine(DtlsEngine):
    def cluster(
        self,
        own_node_id: int,
        management_fd: int,
        management: Any,
        *,
        backward: bool = True,
    ) -> None: ...
    def set_node(self, node_id: int, address: tuple[Any, ...] | None) -> None: ...
    def nodes(self) -> dict[int, tuple[Any, ...]]: ...
    def on_management_readable(self) -> None: ...
    def cluster_counters(self) -> dict[str, int]: ...
