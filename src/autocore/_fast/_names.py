"""Message kinds and reject reason codes shared by both builds of the hot path.

Plain strings, so records compare and log readably; both twins use these very
objects, so ``is`` comparisons hold across the builds.
"""

# Message kinds, one per topic shape of PROTOCOL.md.
ANNOUNCE = "announce"  # autocore/devices/{uuid}/announce
STATUS = "status"  # autocore/devices/{uuid}/status
TELEMETRY = "telemetry"  # autocore/devices/{uuid}/telemetry
RESPONSE = "response"  # autocore/devices/{uuid}/response
COMMAND = "command"  # autocore/devices/{uuid}/command (gateway -> device)
DEVICE_COMMAND = "device_command"  # autocore/devices/{uuid}/commands/{cmd}, autocore/commands/all/{cmd}
RELAY_STATE = "relay_state"  # autocore/devices/{uuid}/relays/state
RELAY_COMMAND = "relay_command"  # autocore/devices/{uuid}/relays/command ({uuid} may be "all")
RELAY_SET = "relay_set"  # autocore/devices/{uuid}/relays/set
RELAY_HEARTBEAT = "relay_heartbeat"  # autocore/devices/{uuid}/relays/heartbeat
MACRO_STATUS = "macro_status"  # autocore/devices/{uuid}/macros/status
DISCOVERY = "discovery"  # autocore/discovery/{sub}
GATEWAY_COMMAND = "gateway_command"  # autocore/gateway/commands/{sub}
SYSTEM = "system"  # autocore/system/{sub}
MODE = "mode"  # autocore/modes/{sub}
RELAY_TELEMETRY = "relay_telemetry"  # autocore/telemetry/relays/data (uuid in payload)
ERROR = "error"  # autocore/errors/{uuid}/{sub}
INVALID = "invalid"  # topic rejected; see Topic.reason

KINDS = (
    ANNOUNCE, STATUS, TELEMETRY, RESPONSE, COMMAND, DEVICE_COMMAND, RELAY_STATE,
    RELAY_COMMAND, RELAY_SET, RELAY_HEARTBEAT, MACRO_STATUS, DISCOVERY,
    GATEWAY_COMMAND, SYSTEM, MODE, RELAY_TELEMETRY, ERROR,
)
