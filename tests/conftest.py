import sys
from pathlib import Path

# Test modules share small log builders (test_decide uses test_diagnose's).
sys.path.insert(0, str(Path(__file__).parent))
