from textkit.words import word_count


def test_word_count_counts_whitespace_separated_words():
    assert word_count("the quick  brown\tfox") == 4


def test_word_count_of_empty_text_is_zero():
    assert word_count("") == 0
