"""What every exercise check is made of: a failure with a message, and a tolerance."""


class Fail(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise Fail(message)


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))
