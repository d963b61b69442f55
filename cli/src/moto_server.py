# moto_server for `assetsync local up`, with DynamoDB transactions made isolated and cheap.
#
# moto 5.2's TransactWriteItems deep-copies every table a transaction touches (once per item) before
# writing, and on a failed condition puts those copies back. Two consequences for a local stack:
#   - time and memory grow with the table: with a 2000-device fleet per vendor (~40k items) each
#     page's transaction copied the whole register, and moto's memory grew past 17 GB;
#   - a failed transaction restores whole tables, silently undoing every write other requests made
#     meanwhile (real DynamoDB transactions are isolated).
# This replacement checks every condition first and writes nothing when one fails (the errors are
# reported exactly as moto reports them); otherwise it applies the writes, keeping a copy of just
# the items it touches so that a write failing midway can be undone. Transactions are serialised
# with each other, and DynamoDB requests are applied one at a time (below). Everything else is moto
# as installed.
#
# Usage: python moto_server.py -H 127.0.0.1 -p PORT   (the arguments of moto_server)
import copy
import sys
import threading

try:
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import DynamoDBBackend
except ImportError as exc:  # another moto: serve it as it is
    print(f"moto_server.py: not patching DynamoDB transactions ({exc})", file=sys.stderr)
    DynamoDBBackend = None

_TRANSACTIONS = threading.Lock()
_OPS = {"ConditionCheck", "Put", "Delete", "Update"}


def _key(backend, op_type, op):
    if op_type != "Put":
        return op["Key"]
    table = backend.get_table(op["TableName"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def transact_write_items(self, transact_items):
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with _TRANSACTIONS:
        seen = set()
        plan = []
        errors = []
        # 1. Check every condition; nothing is written yet.
        for item in transact_items:
            if len(list(item.keys())) > 1:
                raise TransactWriteSingleOpException
            original_item = None
            try:
                op_type, op = next(iter(item.items()))
                if op_type not in _OPS:
                    raise ValueError("Unsupported transaction operation")
                key = _key(self, op_type, op)
                ident = (str(op["TableName"]), str(dict(sorted(key.items()))))
                if ident in seen:
                    raise MultipleTransactionsException()
                seen.add(ident)
                current = self.get_item(op["TableName"], key)
                condition = op.get("ConditionExpression")
                if condition is not None:
                    check = get_filter_expression(
                        condition,
                        op.get("ExpressionAttributeNames"),
                        op.get("ExpressionAttributeValues"),
                    )
                    if not check.expr(current):
                        if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                            original_item = current.to_json()["Attributes"]
                        raise ConditionalCheckFailed(item=original_item)
                plan.append((op_type, op, key, copy.deepcopy(current)))
                errors.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                raise
            except ConditionalCheckFailed as e:
                errors.append(("ConditionalCheckFailed", str(e.message), original_item))
            except Exception as e:  # noqa: BLE001  (reported per item, as moto does)
                errors.append((type(e).__name__, str(e), original_item))
        if any(code is not None for code, _, _ in errors):
            raise TransactionCanceledException(errors)
        # 2. Write; undo what was written if a write fails.
        done = []
        try:
            for op_type, op, key, before in plan:
                name = op["TableName"]
                kwargs = dict(
                    condition_expression=op.get("ConditionExpression"),
                    expression_attribute_names=op.get("ExpressionAttributeNames"),
                    expression_attribute_values=op.get("ExpressionAttributeValues"),
                )
                if op_type == "Put":
                    self.put_item(name, op["Item"], **kwargs)
                elif op_type == "Delete":
                    self.delete_item(name, key, **kwargs)
                elif op_type == "Update":
                    self.update_item(name, key, update_expression=op["UpdateExpression"], **kwargs)
                else:
                    continue
                done.append((name, key, before))
        except Exception:
            for name, key, before in reversed(done):
                if before is None:
                    self.delete_item(name, key)
                else:
                    self.put_item(name, before.to_json()["Attributes"])
            raise


if DynamoDBBackend is not None:
    DynamoDBBackend.transact_write_items = transact_write_items


def _linearize_dynamodb():
    """One DynamoDB request at a time, as DynamoDB applies each atomically.

    Threaded moto reads an item, builds the new one and stores it; another thread may store in
    between, so two `attribute_not_exists` creates of one key can both succeed (a duplicate
    `created` when two connections create one serial at once). Other services stay concurrent.
    """
    from moto.moto_server import werkzeug_app

    lock = threading.Lock()
    dispatch = werkzeug_app.DomainDispatcherApplication.__call__

    def linearized(self, environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                return dispatch(self, environ, start_response)
        return dispatch(self, environ, start_response)

    werkzeug_app.DomainDispatcherApplication.__call__ = linearized


if __name__ == "__main__":
    from moto.server import main

    _linearize_dynamodb()

    main(sys.argv[1:])
