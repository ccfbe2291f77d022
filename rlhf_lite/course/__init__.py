"""What students and instructors use beside the lessons: exercise checkers (``exercises``, ``loop_exercises``),
student notebooks and grading (``student``, ``sandbox``), display helpers (``display``), the results saved with the
notebooks (``saved``), the bridge to TRL's trainers (``trl_bridge``) and the measurements behind the course's
findings (``diagnose``). Nothing in the algorithm modules imports from here."""
