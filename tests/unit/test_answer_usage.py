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
