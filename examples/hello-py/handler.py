"""hello-py: the first Python function. Deploy with `stoke deploy examples/hello-py`."""
import json


def handler(event, context):
    name = event["query"].get("name", ["world"])[0]
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"hello": name, "path": event["path"],
                            "request_id": context.request_id}),
    }
