from infusion.tokens import WordPositions, find_word

# A toy vocabulary: ids >= 100 end a word ("...</w>"), ids < 100 are word pieces that continue.
BOS, EOS = 1000, 1001


def ends(i: int) -> bool:
    return i >= 100


def test_whole_word_matches_every_occurrence_and_every_piece():
    dog = [101]
    teapot = [5, 106]  # "tea" + "pot</w>"
    ids = [BOS, 200, 101, 300, 5, 106, 101, EOS]
    assert find_word(ids, dog, ends) == [2, 6]
    assert find_word(ids, teapot, ends) == [4, 5]


def test_word_inside_another_word_does_not_match():
    pot = [106]
    ids = [BOS, 5, 106, 200, 106, EOS]  # "teapot" then "pot"
    assert find_word(ids, pot, ends) == [4]


def test_first_token_and_embeddings_count_as_boundaries():
    emb = object()  # a textual-inversion embedding in place of an id
    assert find_word([101, emb, 101], [101], ends) == [0, 2]
    assert find_word([emb, 5, 106], [5, 106], ends) == [1, 2]


def test_no_word_no_positions():
    assert find_word([BOS, 200, 300, EOS], [101], ends) == []
    assert find_word([BOS, 101], [], ends) == []


def test_rows_repeat_when_comfy_tiles_a_shorter_prompt():
    p = WordPositions(length=77, words={"dog": (3, 4)})
    assert p.rows("dog", 77) == [3, 4]
    assert p.rows("dog", 231) == [3, 4, 80, 81, 157, 158]
    assert p.rows("cat", 231) == []
    long = WordPositions(length=154, words={"dog": (90,)})
    assert long.rows("dog", 154) == [90]
    assert long.rows("dog", 462) == [90, 244, 398]
