"""diagnose: does a distillation signal push the student toward a correct answer, or away from it?"""

__version__ = "0.1.0"
