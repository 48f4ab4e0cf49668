"""Writes seeds.jsonl: hand-written Python function stubs in HumanEval's format (a signature and a
docstring with examples; the model writes the body). They seed `distill generate --synthesize`,
which has the teacher write more like them (see make_prompts.sh). None is a HumanEval problem."""
import json
import re

SEEDS = [
    ("count_vowels", "s: str", "int", "Return the number of vowels (a, e, i, o, u, either case) in s.", ["count_vowels('Hello') == 2", "count_vowels('xyz') == 0"]),
    ("running_max", "numbers: list", "list", "Return a list whose i-th element is the largest of numbers[0..i].", ["running_max([1, 3, 2, 5]) == [1, 3, 3, 5]", "running_max([]) == []"]),
    ("is_anagram", "a: str, b: str", "bool", "Return True if a and b use the same letters the same number of times, ignoring case and spaces.", ["is_anagram('Listen', 'Silent') is True", "is_anagram('abc', 'abd') is False"]),
    ("chunk", "items: list, size: int", "list", "Split items into consecutive lists of length size; the last one may be shorter.", ["chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]"]),
    ("digit_sum", "n: int", "int", "Return the sum of the decimal digits of the absolute value of n.", ["digit_sum(-123) == 6", "digit_sum(0) == 0"]),
    ("second_largest", "values: list", "int", "Return the second largest distinct value, or None if there is none.", ["second_largest([4, 1, 4, 3]) == 3", "second_largest([7]) is None"]),
    ("compress", "s: str", "str", "Run-length encode s: each run of a repeated character becomes the character followed by the run's length.", ["compress('aaabcc') == 'a3b1c2'", "compress('') == ''"]),
    ("transpose", "matrix: list", "list", "Return the transpose of a rectangular matrix given as a list of rows.", ["transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]"]),
    ("is_leap_year", "year: int", "bool", "Return True if year is a leap year in the Gregorian calendar.", ["is_leap_year(2000) is True", "is_leap_year(1900) is False"]),
    ("word_lengths", "sentence: str", "dict", "Map each word of sentence (split on whitespace) to its length.", ["word_lengths('to be or') == {'to': 2, 'be': 2, 'or': 2}"]),
    ("flatten", "nested: list", "list", "Flatten a list that may contain lists nested to any depth.", ["flatten([1, [2, [3, 4]], 5]) == [1, 2, 3, 4, 5]"]),
    ("gcd_of_list", "numbers: list", "int", "Return the greatest common divisor of a non-empty list of positive integers.", ["gcd_of_list([12, 18, 24]) == 6"]),
    ("caesar_shift", "text: str, k: int", "str", "Shift every lowercase letter of text k places along the alphabet, wrapping around; leave other characters alone.", ["caesar_shift('abz', 1) == 'bca'", "caesar_shift('a-b', 2) == 'c-d'"]),
    ("missing_number", "numbers: list", "int", "numbers holds every integer from 0 to n except one, in any order. Return the missing one.", ["missing_number([3, 0, 1]) == 2"]),
    ("title_case", "s: str", "str", "Capitalise the first letter of every word and lower-case the rest.", ["title_case('hELLO wORLD') == 'Hello World'"]),
    ("pairs_with_sum", "numbers: list, target: int", "int", "Count the pairs i < j with numbers[i] + numbers[j] == target.", ["pairs_with_sum([1, 2, 3, 4], 5) == 2"]),
    ("rotate_left", "items: list, k: int", "list", "Rotate items left by k positions; k may exceed the length.", ["rotate_left([1, 2, 3, 4], 1) == [2, 3, 4, 1]", "rotate_left([1, 2], 5) == [2, 1]"]),
    ("is_balanced", "s: str", "bool", "Return True if every bracket in s, of the kinds (), [] and {}, is closed in the right order.", ["is_balanced('([]{})') is True", "is_balanced('(]') is False"]),
    ("median", "values: list", "float", "Return the median of a non-empty list of numbers.", ["median([3, 1, 2]) == 2", "median([1, 2, 3, 4]) == 2.5"]),
    ("binary_string", "n: int", "str", "Return the binary representation of a non-negative integer without the '0b' prefix.", ["binary_string(5) == '101'", "binary_string(0) == '0'"]),
    ("common_prefix", "words: list", "str", "Return the longest prefix shared by all words, or '' if there is none.", ["common_prefix(['flower', 'flow', 'flight']) == 'fl'"]),
    ("count_islands", "grid: list", "int", "grid is a list of strings of '#' (land) and '.' (water). Count the groups of land cells joined up, down, left or right.", ["count_islands(['#.', '.#']) == 2", "count_islands(['##', '#.']) == 1"]),
    ("dedupe", "items: list", "list", "Remove repeated items, keeping the first occurrence of each and the original order.", ["dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]"]),
    ("nth_prime", "n: int", "int", "Return the n-th prime number, counting from 1.", ["nth_prime(1) == 2", "nth_prime(5) == 11"]),
]


def stub(name, args, ret, doc, examples):
    lines = [f"def {name}({args}) -> {ret}:", '    """' + doc]
    for e in examples:
        call, want = re.split(r" == | is ", e, maxsplit=1)
        lines += [f"    >>> {call}", f"    {want}"]
    return "\n".join(lines) + '\n    """\n'


with open("seeds.jsonl", "w") as f:
    for i, s in enumerate(SEEDS):
        f.write(json.dumps({"prompt": stub(*s), "metadata": {"id": f"seed-{i:03}"}}) + "\n")
print(len(SEEDS), "seeds")
