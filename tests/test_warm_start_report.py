"""The warm start keeps the teacher's report as a report: sections, citations and the references they name."""
from oresearcher import protocol
from oresearcher.rl.warm_start import abridge, abridge_report

REPORT = """# How did the printing press change Europe?

This report examines three aspects. It draws on 3 sources.

## What is a printing press?
A printing press transfers ink onto paper [1]. It was mechanised in the 15th century [1].

## How did it spread?
Presses spread to 270 cities by 1500 [2]. Costs fell sharply [2].

## What changed in religion?
Printed pamphlets carried the Reformation [3]. Literacy rose [3].

## Conclusion
In summary: printing made texts cheap [1] and spread ideas fast [2].

## References
[1]. https://en.wikipedia.org/wiki/Printing_press - Printing press
[2]. https://en.wikipedia.org/wiki/Spread_of_printing - Spread of printing
[3]. https://en.wikipedia.org/wiki/Reformation - Reformation
"""


def test_report_keeps_sections_first_sentences_and_cited_references():
    short = abridge_report(REPORT, sentences=1, sections=2)
    assert short.startswith("# How did the printing press change Europe?")
    assert "## What is a printing press?\nA printing press transfers ink onto paper [1]." in short
    assert "## How did it spread?" in short and "mechanised" not in short and "Costs fell" not in short
    assert "## What changed in religion?" not in short and "Reformation [3]" not in short   # past 2 sections
    assert "## Conclusion\nIn summary: printing made texts cheap [1] and spread ideas fast [2]." in short
    # every citation names a kept source and every kept source is cited: the judge's consistency check
    refs = protocol.parse_references(short)
    assert [n for n, _, _ in refs] == [1, 2]
    assert set(protocol.cited_numbers(short)) == {1, 2}


def test_abridged_trajectory_carries_the_abridged_report():
    text = ("<subtask_list>\n- what a press is\n- how it spread\n</subtask_list>\n<subtask>what a press is</subtask>\n"
            "<think>I should search for the machine itself first.</think>\n"
            "<web_search>query=printing press&num=5</web_search>\n"
            f"<suggested_answer>\n{REPORT}</suggested_answer>\n")
    out = abridge(text, max_subtasks=1, max_tool_calls=2, words=3, report_sentences=1)
    report = protocol.extract_report(out)
    assert report.strip() == abridge_report(REPORT, 1, 1).strip()
    assert "<think>I should search</think>" in out          # other bodies still cut to `words`
