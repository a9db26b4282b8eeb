"""The webui reports extension errors to the console and carries on; tests collect them."""
import logging
import traceback

recorded = []
log = logging.getLogger("a1111_standin.errors")


def report(message, *, exc_info=False):
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    recorded.append(text)
    log.error(text)


def display(e, task, *, full_traceback=False):
    recorded.append(f"{task}: {type(e).__name__}: {e}")
    log.error("%s: %s", task, e, exc_info=e)
