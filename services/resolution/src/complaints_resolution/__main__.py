from complaints_resolution.app import SPEC
from complaints_shared.service import run_service


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
