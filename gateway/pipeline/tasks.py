"""Tasks and workflows: which unit of work a request belongs to.

A request names its task with the header `x-podium-task` (or `metadata.podium_task` in an
OpenAI body) and its workflow with `x-podium-workflow` (or `metadata.podium_workflow`); the
header wins. Requests that share a task id, from callers of the same team (or the same key,
for a caller without one), form one task: the same id used by two teams is two tasks.

- A task id is the caller's own: any string of 1-128 characters from letters, digits and
  `. _ : @ / + = -`, starting with a letter or digit; anything else is refused (400), so an id
  can never smuggle a newline into a log line or blow up a store.
- A workflow name is the config's: one declared under `workflows:` is used as it is; any other
  is counted as `other`, and a task that names none as `none`. Not refused: a caller that runs
  ahead of the config must not lose its traffic over a label, and the label's values stay the
  config's, so a metric's series stay bounded whatever callers send.
- A request that names a workflow but no task is a task of one call (its request id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest
from gateway.pipeline.identity import Principal

TASK_HEADER = "x-podium-task"
WORKFLOW_HEADER = "x-podium-workflow"
TASK_FIELD = "podium_task"             # in an OpenAI body's `metadata`
WORKFLOW_FIELD = "podium_workflow"
MAX_TASK_ID = 128
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")   # MAX_TASK_ID in all
OTHER, NONE = "other", "none"


@dataclass(frozen=True, slots=True)
class TaskTag:
    task: str                          # the caller's task id (or the request id)
    workflow: str                      # a declared workflow, `other` or `none`
    home: str                          # whose task: `team:<name>` or `key:<id>`

    @property
    def key(self) -> tuple[str, str]:
        return self.home, self.task


def task_tag(headers: Mapping[str, str], body: Mapping[str, Any], principal: Principal,
             workflows: frozenset[str], request_id: str) -> TaskTag | None:
    """The request's task, or None when it names neither a task nor a workflow."""
    metadata = body.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    task = headers.get(TASK_HEADER, metadata.get(TASK_FIELD))
    workflow = headers.get(WORKFLOW_HEADER, metadata.get(WORKFLOW_FIELD))
    if task is None and workflow is None:
        return None
    if task is not None and (not isinstance(task, str) or not _TASK_ID.fullmatch(task)):
        where = TASK_HEADER if TASK_HEADER in headers else f"metadata.{TASK_FIELD}"
        raise BadRequest(f"{where} must be 1-{MAX_TASK_ID} characters: letters, digits and "
                         f". _ : @ / + = -, starting with a letter or digit.", param=where)
    name = workflow if isinstance(workflow, str) and workflow in workflows else \
        (NONE if workflow is None else OTHER)
    home = f"team:{principal.team}" if principal.team is not None else f"key:{principal.key_id}"
    return TaskTag(task if task is not None else request_id, name, home)
