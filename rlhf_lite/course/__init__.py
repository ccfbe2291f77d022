"""Course tooling, apart from the algorithms: exercise checkers (``exercises``), student notebooks and grading
(``student``), the bridge to TRL's trainers (``trl_bridge``), the speed benchmark (``bench``), the notebooks'
time budget (``budget``) and where a lesson's signal gets lost (``diagnose``). Nothing in the algorithm modules
imports from here."""
