"""MonitoringService: alerts for admins."""

from __future__ import annotations

import grpc

from privtrain.errors import InvalidInput, NotFound, shown
from privtrain.monitoring.alerts import AlertState
from privtrain.platform.alerting import alert_payload
from privtrain.platform.convert import alert_to_proto
from privtrain.platform.db.repositories import Database
from privtrain.platform.ids import checked_id
from privtrain.platform.rpc import allow
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.roles import PeerIdentity, Role


class MonitoringServicer(pb_grpc.MonitoringServiceServicer):
    """Lists stored alerts."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @allow(Role.ADMIN)
    def ListAlerts(self, request: pb.ListAlertsRequest, context: grpc.ServicerContext,
                   identity: PeerIdentity) -> pb.ListAlertsResponse:
        state = None
        if request.state:
            try:
                state = AlertState(request.state)
            except ValueError:
                raise InvalidInput(f"unknown alert state {shown(request.state)}; use FIRING or "
                                   "RESOLVED") from None
        job_id = None
        if request.job_id:
            try:
                job_id = checked_id(request.job_id, "job_id", "job")
            except NotFound:  # a filter on a job that cannot exist matches nothing
                return pb.ListAlertsResponse()
        alerts = self._db.alerts.list(state=state, job_id=job_id)
        return pb.ListAlertsResponse(alerts=[alert_to_proto(alert_payload(a)) for a in alerts])
