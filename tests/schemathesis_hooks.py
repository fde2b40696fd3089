"""A check for schemathesis (test_serve_contract.py loads it through SCHEMATHESIS_HOOKS): a request the schema
calls valid is answered, and the one refusal allowed is a photo that does not decode, which no JSON Schema can
state (its positive-data check is told to allow 422 for that case alone)."""

import schemathesis


@schemathesis.check
def only_undecodable_photos_are_refused(ctx, response, case):
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 422:
        return None
    detail = response.json().get("detail", "")
    if "cannot read image" not in detail:
        raise AssertionError(f"a request the schema calls valid was refused: 422 {detail}")
    return None
