"""hello-python: the smallest useful Python function."""
import os


def lambda_handler(event, context):
    name = (event or {}).get("name", "world")
    return {
        "message": f"Hello, {name}!",
        "function": context.function_name,
        "request_id": context.aws_request_id,
        "runtime": os.environ.get("AWS_EXECUTION_ENV"),
    }
