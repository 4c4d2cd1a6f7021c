"""How large the Secondary Capture draws the radiograph: one constant, used by every layer.

960 px on the long side: at least twice the ~465 px panels the SC had before (what a viewer
shows of a radiograph at a glance, issue 21), and no more than the 1/2 resolution level of a
1920-3839 px detector image (Agfa DR 100E, GE Optima RX200, CR plates), so those decode at half
size (decoding/reduced.py) instead of in full. A site that wants another size sets
`results.sc_max_side`; decoding follows it.
"""

SC_MAX_SIDE = 960
