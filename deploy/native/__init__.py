"""The project's own C++ tools over ncnn's C++ API (face_embed, face_bench), how they are built, and how they are run."""
