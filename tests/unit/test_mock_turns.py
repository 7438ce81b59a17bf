from longcat.canonical import ChatRequest, Message, TextBlock, ToolResultBlock, ToolUseBlock
from longcat.engines.mock import model_turns


def user(text):
    return Message("user", [TextBlock(text)])


def call(i):
    return Message("assistant", [ToolUseBlock(f"c{i}", "Bash", "{}")])


def result(i, extra_text=None):
    blocks = [ToolResultBlock(f"c{i}", [TextBlock("ok")])]
    if extra_text:
        blocks.append(TextBlock(extra_text))
    return Message("user", blocks)


def turns(*messages):
    return model_turns(ChatRequest(model="m", messages=list(messages)))


def test_counts_answers_since_the_user_asked():
    assert turns(user("go")) == 0
    assert turns(user("go"), call(1), result(1)) == 1
    assert turns(user("go"), call(1), result(1), call(2), result(2)) == 2
    assert turns(user("go"), call(1), result(1), Message("assistant", [TextBlock("done")]), user("again")) == 0


def test_text_a_client_adds_after_tool_results_continues_the_turn():
    # OpenClaw appends its own context as a user message after each tool result.
    assert turns(user("go"), call(1), result(1), user("<internal context>")) == 1
    # Claude Code style: text next to the tool result in the same message.
    assert turns(user("go"), call(1), result(1, extra_text="<system-reminder>")) == 1
