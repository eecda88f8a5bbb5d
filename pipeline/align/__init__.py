"""Alignment of raw face photos to the 112x112 ArcFace 5-point layout that every model here expects.

`transform` fits the similarity transform and warps; `landmarks` holds the 5-point conventions (from a landmarks
file, or derived from dlib's 68 points); `detector` finds faces and landmarks offline (the optional `align` extra);
`folder` turns a folder of photos into an aligned identity folder; `cli` is `python -m pipeline align SRC DST`.
"""
