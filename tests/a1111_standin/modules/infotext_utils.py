"""Stand-in for `modules.infotext_utils`: the parameters text under an image, both ways."""
import json
import re

from modules import script_callbacks

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def create_infotext(p, prompt, extra=None):
    params = dict(p.extra_generation_params)
    params.update(extra or {})
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    neg = f"\nNegative prompt: {p.negative_prompt}" if p.negative_prompt else ""
    return f"{prompt}{neg}\n{line}"


def parse_generation_parameters(x):
    res = {}
    lines = x.strip().split("\n")
    last = lines.pop() if len(lines) > 1 or re_param.search(lines[-1] or "") else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)
    for k, v in re_param.findall(last):
        res[k] = unquote(v)
    script_callbacks.infotext_pasted_callback(x, res)
    return res
