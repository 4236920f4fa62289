"""A RabbitMQ virtual host of one test's or benchmark's own on the local broker (no other Celery user of the
broker sees its queues), made and removed with rabbitmqctl; the default vhost ('') where rabbitmqctl is not
usable here."""

from __future__ import annotations

import shutil
import subprocess
import uuid


def make_vhost(prefix: str = "citylake_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return ""
    made = subprocess.run([ctl, "add_vhost", name], capture_output=True, timeout=60, check=False)
    if made.returncode != 0:
        return ""
    subprocess.run(
        [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], capture_output=True, timeout=60, check=True
    )
    return name


def delete_vhost(name: str) -> None:
    if name and (ctl := shutil.which("rabbitmqctl")):
        subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=60, check=False)
