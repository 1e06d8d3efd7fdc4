"""The product's roles and what each may do on the calibration pages.

Three roles exist. A calibration manager runs the loop: starts, cancels and signs off requests and
edits the sites. A calibration expert sees everything, comments, reruns the calibrations that the
catalogue assigns to them, and closes their tickets through Jira. A viewer only reads. Airflow's own
permissions for the product's DAGs are derived from these roles in ``b2cal_airflow.auth``.

Managers and experts comment on a calibration's ticket from its bucket page.
NOTE: the rerun permission is created and checked (:func:`b2cal_airflow.auth.can_rerun`), but no page
offers a rerun yet. A calibration runs again when the manager rejects it at sign-off or clears its task.
"""

from __future__ import annotations

from enum import StrEnum

MANAGER_ROLE = "Calibration Manager"
EXPERT_ROLE = "Calibration Expert"
VIEWER_ROLE = "Calibration Viewer"
PRODUCT_ROLES = (MANAGER_ROLE, EXPERT_ROLE, VIEWER_ROLE)

# Keys of the directory group mapping, one per product role.
ROLE_KEYS = {"managers": MANAGER_ROLE, "experts": EXPERT_ROLE, "viewers": VIEWER_ROLE}


class ProductAction(StrEnum):
    """An action on the calibration pages that only some roles may take."""

    READ = "read"
    START_REQUEST = "start_request"
    CANCEL_REQUEST = "cancel_request"
    SIGN_OFF = "sign_off"
    EDIT_SITES = "edit_sites"
    COMMENT = "comment"
    RERUN_OWN_CALIBRATION = "rerun_own_calibration"
    CLOSE_TICKET = "close_ticket"


ROLE_ACTIONS: dict[str, frozenset[ProductAction]] = {
    MANAGER_ROLE: frozenset(
        {
            ProductAction.READ,
            ProductAction.START_REQUEST,
            ProductAction.CANCEL_REQUEST,
            ProductAction.SIGN_OFF,
            ProductAction.EDIT_SITES,
            ProductAction.COMMENT,
        }
    ),
    EXPERT_ROLE: frozenset(
        {
            ProductAction.READ,
            ProductAction.COMMENT,
            ProductAction.RERUN_OWN_CALIBRATION,
            ProductAction.CLOSE_TICKET,
        }
    ),
    VIEWER_ROLE: frozenset({ProductAction.READ}),
}


def actions_of(role_names: set[str] | frozenset[str] | list[str]) -> frozenset[ProductAction]:
    """Return the product actions that any of the named roles allows."""
    allowed: set[ProductAction] = set()
    for name in role_names:
        allowed |= ROLE_ACTIONS.get(name, frozenset())
    return frozenset(allowed)
