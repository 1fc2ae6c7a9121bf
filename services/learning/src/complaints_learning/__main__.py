from complaints_shared.service import run_service

from complaints_learning.app import SPEC


def main() -> None:
    run_service(SPEC)


if __name__ == "__main__":
    main()
