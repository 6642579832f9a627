"""paho-mqtt is pinned to the releases the tests cover: client.py relies on its internals.

The receive buffer and the plain-PUBLISH decoder stamp paho's keepalive clock
(``_last_bytes_received``, new in paho 2.2), and ``withdraw`` edits paho's
queue of outgoing messages. Another release may lay these out differently, so
an untested paho fails here with a message that says so, instead of failing
somewhere in the protocol tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from autocore import client

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_installed_paho_is_a_tested_release() -> None:
    problem = client.paho_untested()
    assert problem is None, f"{problem}: run the suite against it and widen PAHO_TESTED and the pin together"


def test_the_pin_in_pyproject_matches_the_tested_releases() -> None:
    if not PYPROJECT.is_file():
        pytest.skip("pyproject.toml is not next to the tests (installed-wheel run)")
    pins = re.findall(r'"paho-mqtt([^"]*)"', PYPROJECT.read_text())
    (low, high) = client.PAHO_TESTED
    assert pins == [f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"], pins


def test_the_paho_internals_the_client_uses_exist() -> None:
    paho_client = client._BufferedClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id="pin-check",
                                  protocol=mqtt.MQTTv5, manual_ack=True)
    missing = [name for name in client.PAHO_INTERNALS if not hasattr(paho_client, name)]
    assert not missing, f"paho-mqtt {paho.mqtt.__version__} lacks {missing}: client.py must be adapted to it"


def test_version_parsing() -> None:
    assert client.paho_version() >= (2, 2)
    assert client.paho_version()[:2] < (2, 3)
