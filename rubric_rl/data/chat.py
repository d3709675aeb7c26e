"""Chat-format samples as token ids with the loss on assistant tokens only.

Works with any chat template: the assistant spans are found by rendering the conversation up to
each assistant turn (with the generation prompt) and up to its end, then mapping those character
spans onto tokens through the fast tokenizer's offsets. No ``{% generation %}`` tags needed.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A sample that is not a valid list of chat messages; the message says what is wrong."""


def validate_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatFormatError(f"messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"messages[{i}].role is {m['role']!r}; expected one of {ROLES}")
        if not isinstance(m["content"], str):
            raise ChatFormatError(f"messages[{i}].content must be a string")
    return messages


@dataclass
class TokenizedChat:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside assistant turns
    truncated: bool

    @property
    def num_loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn's content."""
    text = _render(tokenizer, messages)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:k], add_generation_prompt=True)) if k else 0
        end = len(_render(tokenizer, messages[: k + 1]))
        # Templates may append a separator after the turn ("\n"); the loss covers content and the
        # end-of-turn token, not the separator.
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return text, spans


def tokenize_chat(tokenizer, messages, max_length: int | None = None) -> TokenizedChat:
    """Token ids and labels (loss on assistant turns, end-of-turn token included)."""
    validate_messages(messages)
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for i, (a, b) in enumerate(offsets):
        mid = a if b == a else b - 1  # a token belongs to a span if its last char is inside it
        if any(s <= mid < e for s, e in spans):
            labels[i] = ids[i]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedChat(input_ids=list(ids), labels=labels, truncated=truncated)
