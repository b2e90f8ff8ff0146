from management_api.proxy.answer_usage import NOTHING, AnswerUsage, answer_usage

FINAL_GENERATE = (
    b'{"model":"llama3.2:1b","response":"","done":true,"done_reason":"stop",'
    b'"total_duration":2500000000,"load_duration":900000000,"prompt_eval_count":26,'
    b'"prompt_eval_duration":130000000,"eval_count":298,"eval_duration":1325948000}'
)


def test_an_ollama_stream_tail_gives_tokens_and_gpu_time_without_the_load():
    tail = b'{"response":"Hi","done":false}\n' + FINAL_GENERATE + b"\n"
    usage = answer_usage(tail)
    assert (usage.prompt_tokens, usage.completion_tokens) == (26, 298)
    assert usage.gpu_seconds == (130000000 + 1325948000) / 1e9


def test_an_embedding_answer_counts_its_time_less_the_load():
    tail = (
        b'{"embeddings":[[0.1]],"total_duration":14143917,"load_duration":1019500,'
        b'"prompt_eval_count":8}'
    )
    usage = answer_usage(tail)
    assert usage == AnswerUsage(8, None, (14143917 - 1019500) / 1e9)


def test_an_openai_stream_gives_tokens_and_no_time():
    tail = (
        b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":40,'
        b'"total_tokens":52}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert answer_usage(tail) == AnswerUsage(12, 40, None)


def test_nothing_readable_is_nothing():
    assert answer_usage(b"") is NOTHING
    assert answer_usage(b'{"response": "cut off') is NOTHING
    assert answer_usage(b'{"eval_count": true, "prompt_eval_count": -1}') == NOTHING


def test_a_final_line_longer_than_the_tail_is_read_from_its_end():
    context = b",".join(b"%d" % (i * 7919 % 128000) for i in range(30000))
    line = FINAL_GENERATE[:-1] + b',"context":[' + context + b"]}"
    whole = answer_usage(line + b"\n")  # a whole answer: parsed without its context
    assert (whole.prompt_tokens, whole.completion_tokens) == (26, 298)
    reordered = FINAL_GENERATE.replace(b',"total_duration"', b',"context":[' + context
                                       + b'],"total_duration"')  # fmt: skip
    tail = reordered[-65536:] + b"\n"  # Ollama's order: context, then the metrics
    assert not tail.startswith(b"{")
    assert answer_usage(tail) == whole


def test_the_end_of_a_large_embedding_batch_gives_its_usage():
    vectors = b",".join([b"[" + b",".join([b"0.0123456"] * 768) + b"]"] * 20)
    native = (
        b'{"model":"e","embeddings":['
        + vectors
        + b'],"total_duration":900,"load_duration":100,"prompt_eval_count":40}'
    )
    assert answer_usage(native[-65536:]) == AnswerUsage(40, None, 800 / 1e9)
    items = b",".join(b'{"object":"embedding","embedding":[0.5,0.25],"index":%d}' % i
                      for i in range(5000))  # fmt: skip
    openai = (b'{"object":"list","data":[' + items + b'],"model":"e",'
              b'"usage":{"prompt_tokens":70,"total_tokens":70}}')  # fmt: skip
    assert answer_usage(openai[-65536:]) == AnswerUsage(70, None, None)


def test_a_context_first_in_the_line_is_cut_with_its_comma():
    line = b'{"context":[1,2,3],"done":true,"prompt_eval_count":5,"eval_count":2}'
    assert answer_usage(line) == AnswerUsage(5, 2, None)


def test_only_an_array_of_numbers_is_cut_as_context():
    from management_api.proxy.answer_lines import without_context

    assert without_context(b'{"a":1,"context":[1, -2,3],"b":2}') == b'{"a":1,"b":2}'
    nested = b'{"message":{"tool_calls":[{"arguments":{"context":["a]b"]}}]},"eval_count":3}'
    assert without_context(nested) == nested  # strings: not Ollama's token ids, kept whole
    assert answer_usage(nested) == AnswerUsage(None, 3, None)


def test_the_end_of_a_long_chat_message_gives_its_usage():
    line = (b'{"model":"m","created_at":"2026-12-06T00:00:00Z","message":{"role":"assistant",'
            b'"content":"' + b'a \\"quoted\\" },\\" word ' * 9000 + b'"},"done_reason":"stop",'
            b'"done":true,"total_duration":5,"prompt_eval_count":7,"prompt_eval_duration":2,'
            b'"eval_count":9000,"eval_duration":3}')  # fmt: skip
    assert answer_usage(line[-65536:]) == answer_usage(line) == AnswerUsage(7, 9000, 5 / 1e9)
