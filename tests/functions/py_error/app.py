"""Raises a custom exception: Lambda answers 200 + X-Amz-Function-Error."""


class CustomError(Exception):
    pass


def handler(event, context):
    print("py_error about to raise", flush=True)
    raise CustomError("boom from py_error")
