import pytest

from bljust.config import TokenizerConfig
from bljust.data.tokenizer import CharTokenizer, tokenizer_from_state, train_tokenizer

TEXTS = ["IT IS A TRUTH UNIVERSALLY ACKNOWLEDGED", "THAT A SINGLE MAN IN POSSESSION OF A GOOD FORTUNE",
         "MUST BE IN WANT OF A WIFE", "HOWEVER LITTLE KNOWN THE FEELINGS OR VIEWS OF SUCH A MAN MAY BE"] * 20


def test_char_round_trip_and_blank():
    tok = CharTokenizer()
    ids = tok.encode("IT'S  A TRUTH")
    assert 0 not in ids and tok.decode(ids) == "IT'S A TRUTH"
    assert tok.can_encode("HELLO") and not tok.can_encode("HELLO 42") and not tok.can_encode("")
    assert tokenizer_from_state(tok.state_dict()).encode("ABC") == tok.encode("ABC")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_blank_is_its_own_id(kind):
    tok = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=60), TEXTS)
    ids = tok.encode(TEXTS[0])
    assert tok.blank_id == 0 and 0 not in ids
    assert tok.decode(ids) == TEXTS[0]
    assert tok.decode([0] + ids + [0]) == TEXTS[0]
    again = tokenizer_from_state(tok.state_dict())
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1]) and again.vocab_size == tok.vocab_size
